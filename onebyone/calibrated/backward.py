"""The backward (vector-Jacobian) model of an ONNX model: given a vector at each of some of its outputs (the seeds),
the gradient of their dot product with those outputs at each of some intermediate values (the targets), for one
sample. onnxruntime's inference build has no autodiff; this builds it from the `gradients` rules as a plain ONNX
model that reads the forward values it needs, so one forward and one backward run give every target's gradient at once.

Only the nodes on a path from a target to a seed take part. Shapes are fixed to those of the sample they were
measured on.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnx_ir as ir

from onebyone.calibrated.gradients import BACKWARD_OPSET, FLOAT, NO_GRADIENT, Emitter, Unsupported, rule_for
from onebyone.verify.onnxruntime_run import Probe


@dataclasses.dataclass
class Backward:
    """A backward model: inputs `forward` (forward values, by their names) and one seed per name of `seeds`
    (`seed_input(name)`); outputs the gradient at each target (`gradient_output(name)`)."""

    proto: onnx.ModelProto
    forward: list[str]
    seeds: list[str]
    targets: list[str]

    @staticmethod
    def seed_input(name: str) -> str:
        return f"{name}.seed"

    @staticmethod
    def gradient_output(name: str) -> str:
        return f"{name}.gradient"


def measured_types(model: ir.Model, feed: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """Every value's shape and dtype, from one run of the model on `feed`."""
    names = [v.name for n in model.graph for v in n.outputs if v is not None and v.name]
    names += [v.name for v in model.graph.inputs]
    got = Probe(model, sorted(set(names)), "shapes (backward)", only=True, arena=False).run(feed)
    return {k: tuple(v.shape) for k, v in got.items()}, {k: v.dtype for k, v in got.items()}


def _on_paths(model: ir.Model, seeds: list[str], targets: list[str]) -> set[str]:
    """Names of the values on a path from a target to a seed (both included), through ops gradients flow through."""
    nodes = list(model.graph)
    below = set(targets)
    for n in nodes:
        if n.op_type not in NO_GRADIENT and any(v is not None and v.name in below for v in n.inputs):
            below |= {v.name for v in n.outputs if v is not None}
    above = set(seeds)
    for n in reversed(nodes):
        if any(v is not None and v.name in above for v in n.outputs):
            above |= {v.name for v in n.inputs if v is not None}
    return below & above


def backward_model(model: ir.Model, seeds: list[str], targets: list[str], shapes: dict, dtypes: dict) -> Backward:
    """The backward model from `seeds` (output values) to `targets` (values upstream of them); see the module
    docstring. Raises Unsupported (naming the op) when an op on a path has no rule, or a target reaches no seed."""
    on_path = _on_paths(model, seeds, targets)
    missing = [t for t in targets if t not in on_path]
    if missing:
        raise Unsupported(f"{missing[0]!r} does not reach the outputs")
    graph = ir.Graph(inputs=[], outputs=[], nodes=[], opset_imports={"": BACKWARD_OPSET}, name="backward")
    inputs: dict[str, ir.Value] = {}

    def declare(name: str) -> ir.Value:
        if name not in inputs:
            if name not in dtypes:
                raise Unsupported(f"the type of {name!r} is unknown")
            dtype = ir.DataType.from_numpy(dtypes[name])
            inputs[name] = ir.Value(name=name, type=ir.TensorType(dtype), shape=ir.Shape(shapes[name]))
        return inputs[name]

    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
    e = Emitter(ir.tape.Tape(graph), shapes, dtypes, lambda v: declare(v.name), opset)
    e.needed = on_path
    seed_values = {s: ir.Value(name=Backward.seed_input(s), type=ir.TensorType(FLOAT), shape=ir.Shape(shapes[s]))
                   for s in seeds}
    flows: dict[str, list[ir.Value]] = {s: [v] for s, v in seed_values.items()}
    for node in reversed(list(model.graph)):
        outs = [_total(e, flows.get(v.name)) if v is not None else None for v in node.outputs]
        if all(g is None for g in outs) or not any(v is not None and v.name in on_path for v in node.inputs):
            continue
        try:
            grads = rule_for(node)(e, node, outs)
        except (KeyError, IndexError, TypeError, ValueError) as exc:  # a form of the op its rule does not cover
            raise Unsupported(f"{node.op_type} {node.name!r}: {type(exc).__name__} {exc}") from None
        for v, g in zip(node.inputs, grads):
            if v is not None and v.name in on_path:
                if g is None:
                    raise Unsupported(f"{node.op_type}: no gradient for its input {v.name!r}")
                flows.setdefault(v.name, []).append(g)
                flows[v.name] = [_total(e, flows[v.name])]
    forward = list(inputs)
    graph.inputs.extend([inputs[n] for n in forward] + list(seed_values.values()))
    for t in targets:
        out = e.op("Identity", [_total(e, flows[t])])
        out.name, out.dtype, out.shape = Backward.gradient_output(t), FLOAT, ir.Shape(shapes[t])
        graph.outputs.append(out)
    proto = ir.serde.serialize_model(ir.Model(graph, ir_version=8))
    return Backward(proto, forward, list(seeds), list(targets))


def _total(e: Emitter, parts: list[ir.Value] | None) -> ir.Value | None:
    """The sum of a value's gradient contributions (None: no gradient reaches it)."""
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else e.op("Sum", parts)
