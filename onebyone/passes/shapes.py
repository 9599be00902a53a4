"""Static shapes of the values around Conv nodes, for a model whose inputs are fixed to static shapes."""

from __future__ import annotations

import logging

import numpy as np
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
    model: ir.Model, input_shapes: dict[str, tuple[int, ...]], wanted: set[str]
) -> dict[str, tuple[int, ...]]:
    """Static shapes of the values named in `wanted` (those that can be known).

    Uses ONNX shape inference with data propagation; values it leaves dynamic are measured by running the
    model once in onnxruntime on zero inputs (exporters often compute shapes with Shape/Reshape chains).
    """
    proto = fixed_input_proto(model, input_shapes)
    shapes: dict[str, tuple[int, ...]] = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception as exc:  # noqa: BLE001 - inference failing is not fatal, the probe below covers it
        logger.info("ONNX shape inference failed (%s); measuring shapes with onnxruntime", exc)
        inferred = proto
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            if all(d.HasField("dim_value") for d in dims):
                shapes[vi.name] = tuple(int(d.dim_value) for d in dims)
    missing = sorted(n for n in wanted if n not in shapes)
    if missing:
        shapes.update(_probe_with_onnxruntime(proto, input_shapes, missing))
    return {n: s for n, s in shapes.items() if n in wanted}


def _probe_with_onnxruntime(
    proto: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]], names: list[str]
) -> dict[str, tuple[int, ...]]:
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    existing = {o.name for o in probe.graph.output}
    for n in names:
        if n not in existing:
            probe.graph.output.add().name = n
    feeds = {}
    for vi in probe.graph.input:
        if vi.name in input_shapes:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
            feeds[vi.name] = np.zeros(input_shapes[vi.name], dtype=dtype)
    try:
        sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        outs = sess.run(names, feeds)
    except Exception as exc:  # noqa: BLE001 - shapes stay unknown; the convs are skipped with a reason
        logger.info("onnxruntime shape probe failed: %s", exc)
        return {}
    return {n: tuple(int(d) for d in o.shape) for n, o in zip(names, outs)}
