"""Shared helpers: onnxruntime as the independent reference."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest


def run_ort(model: onnx.ModelProto | ir.Model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of `model` in onnxruntime (CPU)."""
    proto = ir.serde.serialize_model(model) if isinstance(model, ir.Model) else model
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a64 - b64) / max(np.linalg.norm(a64), 1e-30))


def conv_macs_of(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]]) -> int:
    """MACs of all Conv nodes, counted independently from ONNX shape inference (per batch item)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in m.graph.input:
        if vi.name in input_shapes:
            dims = vi.type.tensor_type.shape.dim
            for d, v in zip(dims, input_shapes[vi.name]):
                d.Clear()
                d.dim_value = v
    m = onnx.shape_inference.infer_shapes(m)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in list(m.graph.value_info) + list(m.graph.output)}
    inits = {t.name: list(t.dims) for t in m.graph.initializer}
    consts = {n.output[0]: list(n.attribute[0].t.dims) for n in m.graph.node if n.op_type == "Constant"}
    total = 0
    for n in m.graph.node:
        if n.op_type != "Conv":
            continue
        w = inits.get(n.input[1]) or consts.get(n.input[1])
        out = shapes[n.output[0]]
        total += int(np.prod(out[1:])) * w[1] * int(np.prod(w[2:]))
    return total


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
