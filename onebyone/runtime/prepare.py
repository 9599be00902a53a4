"""Preparing an ONNX model for TVM's Relax frontend: static shapes, folded constants, supported ops only."""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
import onnx_ir as ir

from onebyone.errors import OneByOneError
from onebyone.passes.shapes import fixed_input_proto


def unsupported_by_tvm(proto: onnx.ModelProto) -> list[str]:
    """Op types of the main graph that TVM 0.27's ONNX frontend cannot convert."""
    from tvm.relax.frontend.onnx import onnx_frontend

    known = set(onnx_frontend._get_convert_map())
    return sorted({n.op_type for n in proto.graph.node if n.op_type not in known and n.domain in ("", "ai.onnx")} |
                  {f"{n.domain}::{n.op_type}" for n in proto.graph.node if n.domain not in ("", "ai.onnx")})


def fold_constants(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Constant folding and shape-computation elimination by onnxruntime's basic (ONNX-standard) optimizer, which
    turns exporters' Shape/Gather/Concat chains into constants; returns the model unchanged if it cannot run."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "folded.onnx"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(out)
        opts.log_severity_level = 4  # fatal only (its errors reach the user in the exception)
        try:
            ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            return onnx.load(str(out))
        except Exception:  # noqa: BLE001 - folding is an optimization; TVM gets the unfolded model
            return proto


def prepare(model: ir.Model, input_shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """The model with every input fixed to `input_shapes`, constants folded, checked for TVM support.

    Raises OneByOneError naming the ops TVM cannot import."""
    proto = fold_constants(fixed_input_proto(model, input_shapes))
    missing = unsupported_by_tvm(proto)
    if missing:
        raise OneByOneError(f"TVM's ONNX frontend does not support op(s): {', '.join(missing)}")
    return proto
