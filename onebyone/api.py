"""The Python API for pipelines: optimize, inspect and verify an ONNX model."""

from __future__ import annotations

import os

import onnx_ir as ir

from onebyone.calibrated import DataSource, search
from onebyone.calibrated.holdout import HOLDOUT_EVERY, held_out
from onebyone.errors import OneByOneError, VerificationFailed
from onebyone.modelio import load_model
from onebyone.passes.analysis import DEFAULT_FORMS
from onebyone.passes.initializer_inputs import constant_by_ir, constants_by_ir
from onebyone.passes.input_shapes import graph_inputs, resolve_input_shapes
from onebyone.passes.policies import Policy, RankPolicy
from onebyone.report import Report
from onebyone.verify import tolerances as tol
from onebyone.verify.compare import Verification, verify_models
from onebyone.verify.inputs import Samples, random_samples


def _as_model(model: ir.Model | str | os.PathLike) -> tuple[ir.Model, str]:
    """(model, its name); a model of IR < 4, whose initializers listed as inputs are constants, as a copy whose
    initializers are not inputs (passes.initializer_inputs): every consumer then reads its weights as constants."""
    if isinstance(model, ir.Model):
        name = model.graph.name or "model"
        if constant_by_ir(model):
            model = model.clone()
            constants_by_ir(model)
        return model, name
    loaded = load_model(model)
    constants_by_ir(loaded)
    return loaded, os.path.basename(str(model))


def input_dtypes(model: ir.Model) -> dict:
    """numpy dtype of every real model input."""
    return {v.name: v.dtype.numpy() for v in graph_inputs(model)}


def default_tolerances(report: Report) -> tol.Tolerances:
    """LOSSLESS when every rewritten conv is lossless and nothing is quantized, APPROXIMATE otherwise."""
    t = report.totals
    return tol.LOSSLESS if t.rewritten == t.lossless and not report.int8 else tol.APPROXIMATE


def inspect(
    model: ir.Model | str | os.PathLike,
    policy: Policy | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    calibration: Samples | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress=None,
    forms: tuple[str, ...] = DEFAULT_FORMS,
    exclude: tuple[str, ...] = (),
) -> Report:
    """What `optimize` would do to each conv under `policy`, without changing `model` (with calibration data the
    layers carry data-aware error-vs-rank curves)."""
    _, report = optimize(model, policy, input_shapes, verify=False, calibration=calibration, cache_dir=cache_dir,
                         progress=progress, forms=forms, exclude=exclude)
    return report


def optimize(
    model: ir.Model | str | os.PathLike,
    policy: Policy | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    *,
    samples: Samples | None = None,
    samples_label: str = "random",
    tolerances: tol.Tolerances | None = None,
    verify: bool = True,
    raise_on_failure: bool = True,
    calibration: Samples | None = None,
    cache_dir: str | os.PathLike | None = None,
    latency=None,
    progress=None,
    forms: tuple[str, ...] = DEFAULT_FORMS,
    int8: bool = False,
    exclude: tuple[str, ...] = (),
) -> tuple[ir.Model, Report]:
    """Return (optimized copy of `model`, report). `model` itself is never modified. `forms`: which convs are
    factored and how (passes.analysis.FORMS: "input" kxk convs, the default; "output", "spatial", "tucker2" too: each
    kxk conv in the form passes.forms.choose picks; "pointwise" 1x1 convs too); `exclude`: globs of conv names left
    alone before any budget is spent (passes.exclusion). With `latency` (onebyone.latency.LatencyModel: "cost time")
    every candidate conv and its rewritten pairs are timed on that runtime, ranks are chosen among the measured ones
    that pay (a budget with `time` spends measured milliseconds), and the whole model is timed end to end against the
    original: rewrites are backed off until it is faster beyond the noise (`report.timing`: measured, predicted).
    With `calibration` samples the factorization is data-aware (see BottleneckPass; statistics cached in `cache_dir`
    when given); policy 'error' (needs it) finds the smallest MAC budget whose output error on them is within
    `policy.max_error`. With `int8` (needs `calibration`) the rewrite is deployed INT8 (onebyone.int8, quantized on
    the calibration samples): convs timed as INT8, the end-to-end check and the error search on the quantized
    rewrite, "never slower" against INT8 alone; `report.int8`: the scheme, INT8 alone's verification and speed.

    With `verify` (the default) the report's `verification` compares original and optimized in onnxruntime on
    `samples` (None: verification_inputs) against `tolerances` (None: LOSSLESS when every rewrite is lossless, else
    APPROXIMATE); the model's metadata records what was done and the tolerances met (`stamp`). Failing it raises
    VerificationFailed (`.model`, `.report`) unless `raise_on_failure` is False."""
    original, name = _as_model(model)
    policy = policy or RankPolicy()
    source = _source(policy, calibration, cache_dir)
    quantizer = _quantizer(int8, calibration, latency, progress)
    checked = calibration and (policy.uses_gains or policy.searched)  # model-level checks run the original
    reference = search.Reference(original, calibration, source) if checked else None
    rebuild = lambda keep=None: _deployed(quantizer, _rewrite(  # noqa: E731
        original, name, policy, input_shapes, source, reference, progress, latency, keep, forms, quantizer, exclude))
    samples, samples_label = verification_inputs(samples, samples_label, calibration)
    optimized, report = _never_slower(original, rebuild, latency, quantizer, samples, samples_label, input_shapes,
                                      tolerances)
    if verify:
        _verify_into(report, original, optimized, samples, samples_label, tolerances, input_shapes, raise_on_failure)
    return optimized, report


def _source(policy: Policy, calibration: Samples | None, cache_dir) -> DataSource | None:
    """The calibration data (one source per model: rebuilds reuse its statistics), or None; OneByOneError when the
    policy measures errors and there is none."""
    if policy.searched and not calibration:
        raise OneByOneError(f"policy {policy.kind!r} measures errors on calibration data: give calibration samples")
    return DataSource(calibration, cache_dir) if calibration else None


def _never_slower(original, rebuild, latency, quantizer, samples, samples_label, input_shapes, tolerances=None):
    """(model, report) from `rebuild`; with a latency model, rewrites backed off until the model is faster end to end
    than the original as deployed (quantized by `quantizer` when there is one); with a quantizer, `report.int8`."""
    optimized, report = rebuild()
    baseline = quantizer.original(original) if quantizer else original
    if latency is not None:
        from onebyone.latency import end_to_end

        feed = end_to_end.default_feed(original, resolve_input_shapes(original, input_shapes), samples)
        optimized, report = end_to_end.ensure_faster(baseline, optimized, report, rebuild, latency, feed)
    if quantizer:
        report.int8 = {**quantizer.describe(), "alone": _int8_alone(original, baseline, samples, samples_label,
                                                                     input_shapes, tolerances or tol.APPROXIMATE)}
        if report.timing is not None:
            report.timing["baseline"] = "INT8 alone"
        if latency is not None:  # does quantizing pay at all on this runtime? (basic-pitch: it does not)
            fp, q = end_to_end.time_pair(original, baseline, feed, latency)
            report.int8.update(alone_speedup=round(fp.ms / q.ms, 4), alone_faster=end_to_end.is_faster(fp, q))
    return optimized, report


def _quantizer(int8: bool, calibration, latency, progress=None):
    """The INT8 step after each rewrite (onebyone.int8.Quantizer), or None."""
    if not int8:
        return None
    if not calibration:
        raise OneByOneError("INT8 quantization measures activation ranges on calibration data: give calibration samples")
    if latency is not None and not latency.int8:
        raise OneByOneError("the model is deployed INT8 but the latency model times float convs: LatencyModel(int8=True)")
    from onebyone.int8 import Quantizer

    return Quantizer(calibration, progress)


def _deployed(quantizer, result: tuple[ir.Model, Report]) -> tuple[ir.Model, Report]:
    """The rewrite as it will be deployed: quantized when there is a quantizer."""
    model, report = result
    return (quantizer(model) if quantizer else model), report


def verification_inputs(samples: Samples | None, label: str, calibration: Samples | None) -> tuple[Samples | None, str]:
    """(samples, label) to verify on: `samples` when given; else, with calibration data, its held-out samples (those
    no fit used: calibrated.holdout; all of them when there are too few to hold any out, and the label says so),
    which are real inputs where seeded random ones are not (a data-aware rewrite fitted to photos is not meant to
    hold on noise); else None (_or_random's seeded random samples)."""
    if samples is not None or not calibration:
        return samples, label
    if len(calibration) < HOLDOUT_EVERY:
        return list(calibration), "calibration (also fitted on: too few to hold any out)"
    return held_out(calibration), "held-out calibration"


def _or_random(samples: Samples | None, model: ir.Model, input_shapes) -> Samples:
    """`samples`, or when None the seeded random samples every verification of `model` uses (the same each call)."""
    return samples if samples is not None else random_samples(resolve_input_shapes(model, input_shapes),
                                                              input_dtypes(model))


def _int8_alone(original, quantized, samples, samples_label, input_shapes, tolerances) -> dict:
    """INT8 alone (the original quantized) against the original on the verification samples and `tolerances`: the
    error the quantization brings by itself, beside which the rewrite's is read."""
    return verify_models(original, quantized, _or_random(samples, original, input_shapes), tolerances,
                         inputs_label=samples_label).to_dict()


def _verify_into(report, original, optimized, samples, samples_label, tolerances, input_shapes, raise_on_failure):
    """Verify `optimized` against `original` into report.verification and the model's metadata; raise
    VerificationFailed on a failure when asked to."""
    result = verify_models(original, optimized, _or_random(samples, original, input_shapes),
                           tolerances or default_tolerances(report),
                           inputs_label=samples_label)
    report.verification = result.to_dict()
    stamp(optimized, report)
    if not result.passed and raise_on_failure:
        raise VerificationFailed(result.message(), optimized, report)


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
        "result": ("approximate (INT8)" if report.int8 else "unchanged" if not t.rewritten
                   else "lossless" if t.rewritten == t.lossless else "approximate"),
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


def _rewrite(original, name, policy, input_shapes, source, reference, progress, latency=None,
             keep=None, forms=DEFAULT_FORMS, finish=None, exclude=()) -> tuple[ir.Model, Report]:
    """The rewrite for `policy`: weight-only without a data source; with one, data-aware (a MAC budget checked
    against weight-only at the same budget; an error target searched over budgets, on the rewrite as `finish` makes
    it, e.g. quantized; see calibrated.search), measured against `reference` (the original's outputs on the
    calibration samples). `latency`, `keep` and `exclude` go to the pass."""
    opts = {"latency": latency, "keep": keep, "forms": tuple(forms), "exclude": tuple(exclude)}
    if source is None:
        return search.rewrite(original, name, policy, input_shapes, progress=progress, **opts)
    if policy.searched:
        return search.smallest_budget(original, name, policy, input_shapes, source, progress, reference=reference,
                                      finish=finish, **opts)
    if policy.uses_gains:  # a global budget: checked against weight-only SVD at the same budget
        return search.checked_budget(original, name, policy, input_shapes, source, reference, progress, **opts)
    return search.rewrite(original, name, policy, input_shapes, source, progress, **opts)


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
    return verify_models(ref, cand, _or_random(samples, ref, input_shapes), tolerances, inputs_label=samples_label)
