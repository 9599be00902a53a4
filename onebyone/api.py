"""The Python API for pipelines: optimize, inspect and verify an ONNX model."""

from __future__ import annotations

import os

import onnx_ir as ir

from onebyone.modelio import load_model
from onebyone.passes.bottleneck_pass import BottleneckPass
from onebyone.passes.input_shapes import graph_inputs, resolve_input_shapes
from onebyone.passes.rank_policy import RankPolicy
from onebyone.report import Report
from onebyone.verify import tolerances as tol
from onebyone.verify.compare import Verification, verify_models
from onebyone.verify.inputs import Samples, random_samples


def _as_model(model: ir.Model | str | os.PathLike) -> tuple[ir.Model, str]:
    if isinstance(model, ir.Model):
        return model, model.graph.name or "model"
    return load_model(model), os.path.basename(str(model))


def input_dtypes(model: ir.Model) -> dict:
    """numpy dtype of every real model input."""
    return {v.name: v.dtype.numpy() for v in graph_inputs(model)}


def default_tolerances(report: Report) -> tol.Tolerances:
    """LOSSLESS when every rewritten conv is lossless, APPROXIMATE otherwise."""
    t = report.totals
    return tol.LOSSLESS if t.rewritten == t.lossless else tol.APPROXIMATE


def inspect(
    model: ir.Model | str | os.PathLike,
    policy: RankPolicy | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
) -> Report:
    """What `optimize` would do to each conv under `policy`, without changing `model`."""
    m, name = _as_model(model)
    p = BottleneckPass(policy, input_shapes, model_name=name)
    p(m.clone())
    return p.report


def optimize(
    model: ir.Model | str | os.PathLike,
    policy: RankPolicy | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    *,
    samples: Samples | None = None,
    samples_label: str = "random",
    tolerances: tol.Tolerances | None = None,
    verify: bool = True,
) -> tuple[ir.Model, Report]:
    """Return (optimized copy of `model`, report). `model` itself is never modified.

    With `verify` (the default) the report's `verification` holds the comparison of original and optimized in
    onnxruntime on `samples` (4 seeded random samples when None) against `tolerances` (LOSSLESS when every
    rewrite is lossless, APPROXIMATE otherwise, when None). It is up to the caller to refuse a failed result.
    """
    original, name = _as_model(model)
    optimized = original.clone()
    p = BottleneckPass(policy, input_shapes, model_name=name)
    p(optimized)
    report = p.report
    if verify:
        if samples is None:
            shapes = resolve_input_shapes(original, input_shapes)
            samples = random_samples(shapes, input_dtypes(original))
        result = verify_models(
            original, optimized, samples, tolerances or default_tolerances(report), inputs_label=samples_label
        )
        report.verification = result.to_dict()
    return optimized, report


def verify(
    original: ir.Model | str | os.PathLike,
    optimized: ir.Model | str | os.PathLike,
    samples: Samples | None = None,
    tolerances: tol.Tolerances = tol.LOSSLESS,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    samples_label: str = "random",
) -> Verification:
    """Compare `optimized` against `original` in onnxruntime on `samples` (seeded random when None)."""
    ref, _ = _as_model(original)
    cand, _ = _as_model(optimized)
    if samples is None:
        samples = random_samples(resolve_input_shapes(ref, input_shapes), input_dtypes(ref))
    return verify_models(ref, cand, samples, tolerances, inputs_label=samples_label)
