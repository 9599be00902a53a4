"""How a gradient flows back through each ONNX op: one rule per op type (elementwise, windows, shuffles), each
emitting the ops of the transposed (vector-Jacobian) product at opset BACKWARD_OPSET, whatever the forward model's
opset.

A rule gets the forward node and the gradients of its outputs (None for outputs nothing downstream reads) and
returns a gradient per input (None where none flows: constants, indices, shapes). Forward values a rule reads (a
ReLU's input, a Sigmoid's output) become inputs of the backward model. An op without a rule, or a form of one a
rule does not cover (a weight computed at run time, a bilinear Resize), raises Unsupported naming it: the caller
then measures the other way.
"""

from __future__ import annotations

import onnx_ir as ir

from onebyone.calibrated.gradients import elementwise, shuffles, windows  # noqa: F401 - they register their rules
from onebyone.calibrated.gradients.emitter import BACKWARD_OPSET, FLOAT, RULES, Emitter, Rule, Unsupported

__all__ = ["BACKWARD_OPSET", "FLOAT", "NO_GRADIENT", "RULES", "Emitter", "Unsupported", "rule_for"]

# ops whose outputs do not vary smoothly with their inputs: no gradient flows through them
NO_GRADIENT = {"Shape", "Size", "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Not", "And", "Or", "Xor",
               "ArgMax", "ArgMin", "NonZero", "ConstantOfShape", "IsNaN", "IsInf", "Sign", "Floor", "Ceil", "Round"}


def rule_for(node: ir.Node) -> Rule:
    """The rule of `node`'s op (Unsupported when there is none)."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in RULES:
        raise Unsupported(f"no gradient rule for {node.domain + '::' if node.domain else ''}{node.op_type}")
    return RULES[node.op_type]
