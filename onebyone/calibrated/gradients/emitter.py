"""What every gradient rule builds with (Emitter), how rules register (rule, RULES), and when one cannot apply
(Unsupported).

A gradient rule emits the ops of one op's transposed (vector-Jacobian) product at opset BACKWARD_OPSET, whatever the
forward model's opset.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from onebyone.passes.graph_edits import constant_tensor

BACKWARD_OPSET = 17
FLOAT = ir.DataType.FLOAT


class Unsupported(Exception):
    """The backward model cannot be built: the message names the op and why."""


class Emitter:
    """What a rule builds with: ops at BACKWARD_OPSET, constants, the forward values it reads, their static shapes.
    `shapes`, `dtypes`: every value's (measured); `forward`: called with a forward value, returns it as a backward
    input; `opset`: the forward model's (attribute defaults changed with it)."""

    def __init__(self, tape: ir.tape.Tape, shapes: dict[str, tuple[int, ...]], dtypes: dict[str, np.dtype],
                 forward: Callable[[ir.Value], ir.Value], opset: int) -> None:
        self.tape = tape
        self.dtypes = dtypes
        self.opset = opset
        self.shapes = shapes
        self.forward = forward
        self.needed: set[str] = set()
        self._count = 0

    def wants(self, value: ir.Value | None) -> bool:
        """Whether a gradient of `value` is needed (rules skip the others' work)."""
        return value is not None and value.name in self.needed

    def op(self, op_type: str, inputs: list, **attrs) -> ir.Value:
        return self.tape.op(op_type, inputs, attrs or None)

    def const(self, array) -> ir.Value:
        self._count += 1
        array = np.asarray(array)
        return self.tape.initializer(ir.tensor(array), name=f"bw.const.{self._count}")

    def shape(self, value: ir.Value) -> tuple[int, ...]:
        if value.name not in self.shapes:
            raise Unsupported(f"the shape of {value.name!r} is unknown")
        return self.shapes[value.name]

    def mask(self, condition: ir.Value, grad: ir.Value) -> ir.Value:
        """`grad` where `condition` holds, 0 elsewhere."""
        return self.op("Where", [condition, grad, self.const(np.float32(0))])

    def unbroadcast(self, grad: ir.Value, to: tuple[int, ...], of: tuple[int, ...]) -> ir.Value:
        """`grad` of a broadcast result of shape `of`, summed back to an operand of shape `to`."""
        if tuple(to) == tuple(of):
            return grad
        lead = len(of) - len(to)
        axes = list(range(lead)) + [lead + i for i, d in enumerate(to) if d == 1 and of[lead + i] != 1]
        if axes:
            grad = self.op("ReduceSum", [grad, self.const(np.array(axes, np.int64))], keepdims=1)
        return self.op("Reshape", [grad, self.const(np.array(to, np.int64))])


def constant(value: ir.Value | None) -> np.ndarray | None:
    """The array of a value known before the model runs (an initializer or a Constant's output, also through Identity
    copies), else None."""
    tensor = constant_tensor(value)
    return None if tensor is None else tensor.numpy()


def attr(node: ir.Node, name: str, default):
    """An attribute's value, `default` when the node does not have it."""
    a = node.attributes.get(name)
    return default if a is None else a.value


def text(node: ir.Node, name: str, default: str) -> str:
    """A string attribute as str (onnx-ir may hold bytes)."""
    value = attr(node, name, default)
    return value.decode() if isinstance(value, bytes) else value


Rule = Callable[[Emitter, ir.Node, list], list]
RULES: dict[str, Rule] = {}


def rule(*ops: str):
    def register(fn: Rule) -> Rule:
        for op in ops:
            RULES[op] = fn
        return fn
    return register
