"""Initializers listed among a graph's inputs (old exporters, the ONNX model zoo's classic models): constants or
run-time overridable defaults, by the model's IR version.

Under IR < 4 every initializer had to be a graph input, and onnxruntime treats them as constants (it does not even
list them as inputs): making them plain initializers changes nothing, so onebyone does it to every such model it
loads. Under IR >= 4 an initializer that is also a graph input is a default the caller may override at run time;
convs reading such a weight are skipped unless the user asks for them to be constants (`--constant-initializers`,
or this pass applied before onebyone's), which is what onnxruntime's own advice in its warning
("Initializer W appears in graph inputs and will not be treated as constant value/weight") amounts to.
"""

from __future__ import annotations

import onnx_ir as ir

OVERRIDABLE_FROM_IR = 4  # the first IR version where an initializer listed as a graph input may be overridden
OPTION = "--constant-initializers"  # the command line's way to apply ConstantInitializersPass first


class ConstantInitializersPass(ir.passes.InPlacePass):
    """Every graph input that has an initializer stops being an input and stays an initializer, and the IR version
    is raised to at least 4. Guarantees: for every feed of the remaining inputs the model computes what it computed
    with those initializers' defaults (under IR < 4, what it computed with any feed: they were constants); nothing
    else changes. `modified` is False when no input had an initializer and the IR version was already 4 or more."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        inputs = model.graph.inputs
        dropped = [v for v in inputs if v.is_initializer()]
        for v in dropped:
            inputs.remove(v)
        raised = constant_by_ir(model)
        if raised:
            model.ir_version = OVERRIDABLE_FROM_IR
        return ir.passes.PassResult(model, modified=bool(dropped) or raised)


def constant_by_ir(model: ir.Model) -> bool:
    """Whether the model's IR version (< 4) makes its initializers listed as inputs constants."""
    return model.ir_version is not None and model.ir_version < OVERRIDABLE_FROM_IR


def constants_by_ir(model: ir.Model) -> bool:
    """Apply ConstantInitializersPass when the model's IR version (< 4) makes its initializer inputs constants
    anyway; True when the model changed."""
    return constant_by_ir(model) and ConstantInitializersPass()(model).modified
