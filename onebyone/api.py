"""The Python API for pipelines: optimize, inspect and verify an ONNX model."""

from __future__ import annotations

import os

import onnx_ir as ir

from onebyone.errors import OneByOneError, VerificationFailed
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
    calibration: Samples | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress=None,
) -> Report:
    """What `optimize` would do to each conv under `policy`, without changing `model` (with calibration data the
    layers carry data-aware error-vs-rank curves)."""
    _, report = optimize(model, policy, input_shapes, verify=False, calibration=calibration, cache_dir=cache_dir,
                         progress=progress)
    return report


def optimize(
    model: ir.Model | str | os.PathLike,
    policy: RankPolicy | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    *,
    samples: Samples | None = None,
    samples_label: str = "random",
    tolerances: tol.Tolerances | None = None,
    verify: bool = True,
    raise_on_failure: bool = True,
    calibration: Samples | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress=None,
) -> tuple[ir.Model, Report]:
    """Return (optimized copy of `model`, report). `model` itself is never modified.

    With `calibration` samples the factorization is data-aware (see BottleneckPass); statistics are cached in
    `cache_dir` when given. Policy 'error' (needs calibration) searches the smallest MAC budget whose model
    outputs on the calibration samples stay within `policy.max_error` relative L2 error.

    With `verify` (the default) the report's `verification` holds the comparison of original and optimized in
    onnxruntime on `samples` (4 seeded random samples when None) against `tolerances` (LOSSLESS when every
    rewrite is lossless, APPROXIMATE otherwise, when None), and the optimized model's metadata records what was done
    and the tolerances it met (see `stamp`). A failed verification raises VerificationFailed (its message lists
    what failed; `.model` and `.report` hold the result) unless `raise_on_failure` is False.
    """
    original, name = _as_model(model)
    policy = policy or RankPolicy()
    if policy.kind == "error":
        if not calibration:
            raise OneByOneError("policy 'error' measures errors on calibration data: give --calibration")
        optimized, report = _search_budget(original, name, policy, input_shapes, calibration, cache_dir, progress)
    else:
        optimized, report = _rewrite(original, name, policy, input_shapes, calibration, cache_dir, progress)
    if verify:
        if samples is None:
            shapes = resolve_input_shapes(original, input_shapes)
            samples = random_samples(shapes, input_dtypes(original))
        result = verify_models(
            original, optimized, samples, tolerances or default_tolerances(report), inputs_label=samples_label
        )
        report.verification = result.to_dict()
        stamp(optimized, report)
        if not result.passed and raise_on_failure:
            raise VerificationFailed(result.message(), optimized, report)
    return optimized, report


METADATA_PREFIX = "onebyone."


def stamp(model: ir.Model, report: Report) -> None:
    """Record in `model`'s metadata_props what onebyone did (policy, method, lossless or approximate) and the
    verification it went through (tolerances, inputs, passed), so that `verify` can hold it to the same tolerances."""
    import json

    from onebyone import __version__

    t = report.totals
    props = {
        "version": __version__,
        "policy": report.policy,
        "method": report.method,
        "result": "unchanged" if not t.rewritten else ("lossless" if t.rewritten == t.lossless else "approximate"),
        "rewritten_convs": f"{t.rewritten} of {t.convs} ({t.lossless} lossless)",
        "mac_ratio": f"{t.mac_ratio:.4f}",
    }
    v = report.verification
    if v is not None:
        props["tolerances"] = json.dumps(v["tolerances"], sort_keys=True)
        props["verified"] = json.dumps({"passed": v["passed"], "inputs": v["inputs"], "samples": v["samples"]})
    for key, value in props.items():
        model.metadata_props[METADATA_PREFIX + key] = str(value)


def recorded_tolerances(model: ir.Model) -> tol.Tolerances | None:
    """The tolerances that `optimize` verified `model` against (from its metadata), or None if it has none."""
    import json

    text = model.metadata_props.get(METADATA_PREFIX + "tolerances")
    if not text:
        return None
    try:
        return tol.Tolerances.from_dict(json.loads(text))
    except (ValueError, TypeError):
        return None


def _held_out(items: list) -> list:
    """The held-out part of a per-calibration-sample list (the samples themselves, or one output per sample)."""
    from onebyone.passes.data_fit import HOLDOUT_EVERY

    return items[HOLDOUT_EVERY - 1 :: HOLDOUT_EVERY] or items


def _rewrite(original, name, policy, input_shapes, calibration, cache_dir, progress,
             held_reference=None) -> tuple[ir.Model, Report]:
    """A rewritten copy of `original` and its report. With calibration data and a MAC budget, the data-aware rewrite
    is kept only when its model-output error on held-out calibration samples (every 4th) is at most that of
    weight-only SVD under the same budget; otherwise the weight-only rewrite is returned. Either way the report's
    `method_check` holds both errors. `held_reference`: the original's outputs on those samples, if already run."""
    optimized = original.clone()
    p = BottleneckPass(policy, input_shapes, model_name=name, calibration=calibration, cache_dir=cache_dir, progress=progress)
    p(optimized)
    if not calibration or policy.kind != "budget" or not p.report.totals.rewritten:
        return optimized, p.report
    from onebyone.verify.metrics import worst_part_rel_l2
    from onebyone.verify.onnxruntime_run import run_samples, session
    from onebyone.verify.parts import output_splits

    held = _held_out(calibration)
    splits = output_splits(original)
    weight_only = original.clone()
    q = BottleneckPass(policy, input_shapes, model_name=name)
    q(weight_only)
    ref = held_reference or run_samples(session(original, "original"), held)

    def error(m: ir.Model) -> float:
        return worst_part_rel_l2(ref, run_samples(session(m, "rewritten"), held), splits)

    e_data, e_weight = error(optimized), error(weight_only)
    keep_data = e_data <= e_weight
    report = p.report if keep_data else q.report
    report.method_check = {"data": e_data, "weight": e_weight, "kept": "data" if keep_data else "weight",
                           "samples": len(held)}
    report.calibration = p.report.calibration
    return (optimized if keep_data else weight_only), report


def _search_budget(original, name, policy, input_shapes, calibration, cache_dir, progress, steps: int = 6):
    """Bisection on the MAC budget: the smallest fraction whose calibration output error is <= max_error."""
    import tempfile

    from onebyone.verify.metrics import worst_part_rel_l2
    from onebyone.verify.onnxruntime_run import run_samples, session
    from onebyone.verify.parts import output_splits

    splits = output_splits(original)
    ref = run_samples(session(original, "original"), calibration)
    held_ref = {k: _held_out(vs) for k, vs in ref.items()}
    cache = cache_dir or tempfile.mkdtemp(prefix="onebyone-cache-")
    best = None
    lo, hi = 0.0, 1.0
    for step in range(steps):
        frac = hi if best is None and step == 0 else (lo + hi) / 2
        budget_policy = RankPolicy("budget", macs=frac, round_to=policy.round_to)
        candidate, step_report = _rewrite(original, name, budget_policy, input_shapes, calibration, cache, progress,
                                          held_ref)
        got = run_samples(session(candidate, "candidate"), calibration)
        err = worst_part_rel_l2(ref, got, splits)
        if err <= policy.max_error:
            best = (candidate, step_report, frac, err)
            hi = frac
        else:
            lo = frac
        if step == 0 and best is None:
            break
    if best is None:  # even the full budget misses: return the model unchanged
        candidate = original.clone()
        p = BottleneckPass(RankPolicy("budget", macs=1.0), input_shapes, model_name=name, calibration=calibration, cache_dir=cache)
        p(candidate)
        best = (candidate, p.report, 1.0, 0.0)
    candidate, report, frac, err = best
    report.policy = f"{policy.describe()} (found MAC budget {frac:.3f}, calibration output error {err:.3g})"
    return candidate, report


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
