"""Static shapes of the values around Conv nodes, for a model whose inputs are fixed to static shapes."""

from __future__ import annotations

import logging

import onnx
import onnx_ir as ir

logger = logging.getLogger(__name__)


def fixed_input_proto(model: ir.Model, input_shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """A protobuf copy of `model` whose inputs have the given static shapes (the model is not changed)."""
    proto = ir.serde.serialize_model(model)
    for vi in proto.graph.input:
        if vi.name in input_shapes:
            dims = vi.type.tensor_type.shape.dim
            del dims[:]
            for d in input_shapes[vi.name]:
                dims.add().dim_value = d
    return proto


def static_shapes(
    model: ir.Model, input_shapes: dict[str, tuple[int, ...]], wanted: set[str], measure=None
) -> dict[str, tuple[int, ...]]:
    """Static shapes of the values named in `wanted` (those that can be known).

    Uses ONNX shape inference with data propagation; values it leaves dynamic are measured by
    `measure(proto, input_shapes, names)` when given (e.g. one onnxruntime run on zero inputs: exporters often compute
    shapes with Shape/Reshape chains that inference cannot follow).
    """
    proto = fixed_input_proto(model, input_shapes)
    shapes: dict[str, tuple[int, ...]] = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception as exc:  # noqa: BLE001 - inference failing is not fatal, the probe below covers it
        logger.info("ONNX shape inference failed (%s); measuring the shapes", exc)
        inferred = proto
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            if all(d.HasField("dim_value") for d in dims):
                shapes[vi.name] = tuple(int(d.dim_value) for d in dims)
    missing = sorted(n for n in wanted if n not in shapes)
    if missing and measure is not None:
        shapes.update(measure(proto, input_shapes, missing))
    return {n: s for n, s in shapes.items() if n in wanted}
