"""Running ONNX models with onnxruntime (the reference numerics)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from onebyone.errors import OneByOneError
from onebyone.modelio import has_external_data, unsupported_ops

ort.set_default_logger_severity(3)  # onnxruntime's own log lines would print before onebyone's one-line errors


def session(model: ir.Model | onnx.ModelProto | str | os.PathLike, label: str = "model") -> ort.InferenceSession:
    """A CPU onnxruntime session for a model object or file; OneByOneError when onnxruntime cannot load it."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        if isinstance(model, onnx.ModelProto):
            return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        if isinstance(model, ir.Model):
            if has_external_data(model):
                with tempfile.TemporaryDirectory() as tmp:
                    path = Path(tmp) / "model.onnx"
                    ir.save(model, path, external_data="model.onnx.data")
                    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            data = ir.serde.serialize_model(model).SerializeToString()
            return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        return ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types; all mean "cannot run"
        if isinstance(model, ir.Model) and (ops := unsupported_ops(model)):
            raise OneByOneError(f"onnxruntime cannot load {label}: unsupported op(s) {', '.join(ops)}") from None
        text = " ".join(str(exc).split()) or type(exc).__name__
        if "onnxruntime_src" in text:  # drop the C++ source location, keep the message
            text = text.rsplit(") ", 1)[-1]
        raise OneByOneError(f"onnxruntime cannot load {label}: {text[:300]}") from None


def run_samples(
    sess: ort.InferenceSession, samples: list[dict[str, np.ndarray]], label: str = "model"
) -> dict[str, list[np.ndarray]]:
    """Outputs per output name, one array per sample, in sample order; OneByOneError when a run fails."""
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}
    outs: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for feed in samples:
        missing = sorted(wanted - set(feed))
        if missing:
            raise OneByOneError(f"{label} needs input {missing[0]!r}, which the verification inputs do not have")
        try:
            results = sess.run(names, {k: v for k, v in feed.items() if k in wanted})
        except Exception as exc:  # noqa: BLE001 - a failed run is the model's or the inputs' problem
            text = " ".join(str(exc).split())
            raise OneByOneError(f"onnxruntime failed to run {label}: {text[:300]}") from None
        for n, arr in zip(names, results):
            outs[n].append(arr)
    return outs
