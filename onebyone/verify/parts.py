"""Outputs that hold quantities of different scale, split into parts that are each judged on their own scale.

A detector's output often concatenates box coordinates in pixels (0-640) with class scores in [0, 1]; YOLOv8 exports
`Concat([boxes, Sigmoid(scores)], axis=1)` as one `[1, 4 + classes, anchors]` output. The relative error of such an
output as a whole is the boxes' error: damage confined to the scores is invisible to it. So every output made by a
Concat (directly, or through Identity / Cast / Transpose after it) is split along the Concat's axis into one part per
Concat input; every other output is one part. Errors are then measured per part, each normalized by its own scale,
and the error of a model is that of its worst part.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnx_ir as ir

PASS_THROUGH = {"Identity", "Cast"}


@dataclasses.dataclass(frozen=True)
class Split:
    """An output cut along `axis` into named slices `bounds` = [(label, start, stop), ...]."""

    axis: int
    bounds: tuple[tuple[str, int, int], ...]

    def slices(self, array: np.ndarray) -> list[tuple[str, np.ndarray]]:
        """(label, slice of `array`) per part; `array` holds one sample (no leading sample axis added)."""
        out = []
        for label, start, stop in self.bounds:
            index = [slice(None)] * array.ndim
            index[self.axis] = slice(start, stop)
            out.append((label, array[tuple(index)]))
        return out


def _dims(value: ir.Value | None) -> tuple[int | None, ...] | None:
    """The value's dims (None for a symbolic one), or None when its rank is unknown."""
    if value is None or value.shape is None:
        return None
    return tuple(d if isinstance(d, int) else None for d in value.shape)


def _with_shapes(model: ir.Model) -> ir.Model | None:
    """A copy of the main graph with ONNX shape inference applied (weights are not needed for it)."""
    try:
        proto = ir.serde.serialize_model(model)
        for t in proto.graph.initializer:  # only small tensors (shapes, axes) matter to shape inference
            if int(np.prod(t.dims)) <= 64:
                continue
            t.ClearField("raw_data")
            t.ClearField("float_data")
            t.ClearField("external_data")
            t.data_location = onnx.TensorProto.DEFAULT
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
        return ir.serde.deserialize_model(inferred)
    except Exception:  # noqa: BLE001 - no inferred shapes simply means no split
        return None


def _split_of(output: ir.Value) -> Split | None:
    """The Concat split of one graph output, mapped through the pass-through ops and Transposes after it."""
    value, perm = output, None  # perm[i] = axis of `value` that output axis i comes from
    while value.producer() is not None:
        node = value.producer()
        if node.op_type in PASS_THROUGH and node.domain in ("", "ai.onnx"):
            value = node.inputs[0]
        elif node.op_type == "Transpose" and node.domain in ("", "ai.onnx"):
            attr = node.attributes.get("perm")
            if attr is None:
                return None
            p = list(attr.as_ints())
            perm = p if perm is None else [p[a] for a in perm]
            value = node.inputs[0]
        else:
            break
    node = value.producer()
    if node is None or node.op_type != "Concat" or node.domain not in ("", "ai.onnx") or len(node.inputs) < 2:
        return None
    shape = _dims(value)
    if shape is None:
        return None
    axis = node.attributes.get_int("axis", 0)
    axis = axis + len(shape) if axis < 0 else axis
    sizes = []
    for v in node.inputs:
        s = _dims(v)
        if s is None or len(s) != len(shape) or s[axis] is None:
            return None
        sizes.append(s[axis])
    if len([s for s in sizes if s > 0]) < 2:
        return None
    out_axis = perm.index(axis) if perm is not None else axis
    bounds, start = [], 0
    for v, size in zip(node.inputs, sizes):
        if size:
            bounds.append((f"[{start}:{start + size}] ({v.name})", start, start + size))
        start += size
    return Split(out_axis, tuple(bounds))


def output_splits(model) -> dict[str, Split]:
    """Per graph output name, how it splits into parts (outputs that are one part are absent).

    Guarantees: `model` is not modified; shapes the model does not carry are inferred on a weightless copy; an output
    whose Concat inputs have unknown sizes along the axis is one part; anything but an ir.Model has no splits."""
    if not isinstance(model, ir.Model) or not any(o.producer() is not None for o in model.graph.outputs):
        return {}
    shaped = model
    needs_shapes = any(_dims(v) is None for n in model.graph if n.op_type == "Concat" for v in (*n.inputs, *n.outputs))
    if needs_shapes:
        shaped = _with_shapes(model) or model
    out = {}
    for o in shaped.graph.outputs:
        split = _split_of(o)
        if split is not None:
            out[o.name] = split
    return out
