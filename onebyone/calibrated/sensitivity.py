"""How strongly each conv's output error reaches the model's outputs, measured per conv at a few ranks (not at every
candidate rank).

A MAC budget split by each conv's own (local) error treats an error in the RGB stem like an error deep in the
network; they are not alike. For every candidate conv, the model is run on a few calibration samples with only that
conv rewritten (whitened factorization) at up to PROBES_PER_CONV probe ranks; the gain at a probe is the measured
model-output relative error (the worst part of the worst output, as in verification) divided by the measured
relative error of the conv's own output; when the model's single output is a Softmax, the model-output error is
that of its logits' margins among each row's top classes (the Softmax's input): probabilities near 0 or 1 shrink
every error by a factor set by how confident each probe sample is, so gains on them depend on which samples probe
them (open_nsfw, two sets of 8 crops of the same photos: the median conv's gain 1.9x apart, up to 12x; on the
margins 1.4x, up to 2.3x), and all the logits of a wide head are mostly classes no input is near. To first order the
model-output error of a set of rewrites is then sqrt(Σ gain² · local error²), with the local error taken from the
conv's predicted error curve; that is what the budget allocation minimises. The probes run only the part of the
model after the conv: one stream walks the original model from conv to conv; each probe runs the rewritten conv
from that frontier, then the model's tail from its output, in one onnxruntime session per conv for all its probe
ranks (the tail is the same graph at every rank).

The exact probes' cost grows with the square of the depth (each runs the model's tail). Carrying an error to the
outputs through checkpoints (the relative error at a cut a few convs on, times a gain measured once per cut) was
measured to misstate gains by up to 6x on open_nsfw, because the error's direction, not only its size, decides how
much of it the tail keeps (README, "Calibration speed"). What keeps the direction at a cost linear in depth is a
gradient: where it costs less and every op on the way has a rule, the gains are taken to first order from one
backward model (calibrated.linear_gains), at the same probe ranks, on the same samples.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir

from onebyone.atomic import atomic_file
from onebyone.calibrated import linear_gains, moments, probe_walk
from onebyone.calibrated.backward import measured_types
from onebyone.calibrated.gradients import Unsupported
from onebyone.errors import OneByOneError
from onebyone.calibrated.blas_threads import alongside_onnxruntime
from onebyone.passes.plan import Decision, candidate_ranks
from onebyone.verify.decisions import measured_outputs
from onebyone.verify.logits import softmax_input, top_margins_rel_l2
from onebyone.verify.metrics import worst_part_rel_l2
from onebyone.verify.onnxruntime_run import Probe
from onebyone.verify.parts import output_splits

PROBE_ERROR = 0.1  # one probe at the smallest candidate rank whose predicted local error is at most this
PROBES_PER_CONV = 3  # ... and others spread down to the smallest candidate rank (errors are not linear in rank)
PROBE_SAMPLES = 8
FIRST_ORDER = "first order (one backward model)"
EXACT = "exact probes"
# in the cache key
SETTINGS = (f"probes v4 (top margins, first order when cheaper): error {PROBE_ERROR}, {PROBES_PER_CONV} per conv, "
            f"{PROBE_SAMPLES} samples")


def probe_ranks(d: Decision, round_to: int = 1) -> list[int]:
    """The ranks a conv is probed at, ascending: candidate ranks from the smallest up to the first whose
    predicted error is at most PROBE_ERROR, evenly spread (none when the conv has no candidate rank)."""
    ranks = candidate_ranks(d, round_to)
    if len(ranks) == 0:
        return []
    curve = d.error_curve()
    ok = [int(r) for r in ranks if curve[r] <= PROBE_ERROR]
    top = ok[0] if ok else int(ranks[-1])
    below = [int(r) for r in ranks if r <= top]
    picks = np.linspace(len(below) - 1, 0, min(PROBES_PER_CONV, len(below))).round().astype(int)
    return sorted({below[i] for i in picks})


def output_gains_cached(model: ir.Model, decisions: list[Decision], samples: list[dict], round_to: int,
                        cache_dir, progress=None, data=None,
                        notes: dict | None = None) -> tuple[dict[str, np.ndarray], bool]:
    """`output_gains` with an on-disk cache in `cache_dir` (None: no cache), keyed like the calibration statistics
    (the model, all calibration samples, the probed convs; `data`: see moments.cache_key) plus `round_to` and the
    probe settings, so that every policy and budget run on the same model and data measures them once. Returns
    (gains, loaded_from_cache); `notes`: see output_gains (kept in the cache too)."""
    if cache_dir is None:
        return output_gains(model, decisions, samples, round_to, progress, notes), False
    names = sorted(d.info.name for d in _live(decisions))
    other_forms = sorted(f"{d.info.name}:{d.form}" for d in _live(decisions) if d.form != "input")
    key = moments.cache_key(model, samples, names + [f"round_to={round_to}", SETTINGS] + other_forms, data)
    path = Path(cache_dir) / f"gains-{key}.npz"
    notes = {} if notes is None else notes
    if path.is_file():
        with np.load(path) as data:
            notes["gains_method"] = str(data["method"]) if "method" in data else "unknown"
            return {n: data[f"{i}"] for i, n in enumerate(names)}, True
    gains = output_gains(model, decisions, samples, round_to, progress, notes)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, suffix=".npz") as tmp:
        arrays = {f"{i}": gains[n] for i, n in enumerate(names)}
        np.savez(tmp, method=np.array(notes.get("gains_method", "")), **arrays)
    return gains, False


def _live(decisions: list[Decision]) -> list[Decision]:
    """The decisions whose convs are probed: candidates with calibration statistics."""
    return [d for d in decisions if d.info.skip_reason is None and d.moments is not None]


def _by_name(runs: list[dict[str, np.ndarray]], keys: list[str]) -> dict[str, list[np.ndarray]]:
    """Per-sample {name: array} runs regrouped as {name: [array per sample]} for the given names."""
    return {k: [run[k] for run in runs] for k in keys}


def measured_gains(model: ir.Model, decisions: list[Decision], samples: list[dict], round_to: int = 1,
                   method: str | None = None, progress=None) -> tuple[dict[str, tuple[list[int], list[float]]], str]:
    """Per probed conv name, (its probe ranks, the gains measured there), on at most PROBE_SAMPLES of `samples`, and
    how they were measured: `method` None, the cheaper way (as output_gains); EXACT or FIRST_ORDER, that way (first
    order raises gradients.Unsupported or OneByOneError where it cannot be taken). Both ways at the same ranks on
    the same samples, for comparing them (scripts/benchmark_gains.py)."""
    with alongside_onnxruntime():
        return _measure(model, decisions, samples[:PROBE_SAMPLES], round_to, progress, method)


def output_gains(model: ir.Model, decisions: list[Decision], samples: list[dict], round_to: int = 1,
                 progress=None, notes: dict | None = None) -> dict[str, np.ndarray]:
    """Per candidate conv name, the gain at every rank 0..C/g: measured at `probe_ranks`, interpolated linearly in
    rank between them (held constant outside) and never below the gain at the top probe. Convs that cannot be
    probed get the median gain of the others at every rank. `notes` (a dict) receives "gains_method": how they were
    measured and, for the exact probes, why not to first order.

    Guarantees: `model` is not modified; on at most PROBE_SAMPLES samples; exact probes: per probed conv, one
    onnxruntime session of the model's tail after it (shared by its probe ranks), one of the conv and one of the
    rewritten conv per probe rank; first order (when cheaper, see _measure): one forward and one backward session
    for all convs, and the conv sessions; of the activations, only the stream's frontier, one conv's outputs and
    the gradients (past linear_gains.GRADIENT_MEMORY on disk) are held at a time."""
    live = _live(decisions)
    measured, how = measured_gains(model, decisions, samples, round_to, progress=progress)
    if notes is not None:
        notes["gains_method"] = how
    fallback = float(np.median([g for _, gs in measured.values() for g in gs])) if measured else 1.0
    out = {}
    for d in live:
        size = len(d.error_curve())
        if d.info.name in measured:
            rs, gs = measured[d.info.name]
            # below the top probe a gain may only rise: model outputs that saturate (softmax, ReLU) make large
            # errors look cheap, and trusting that would drive some convs to extreme ranks
            out[d.info.name] = np.maximum(np.interp(np.arange(size), rs, gs), gs[-1])
        else:
            out[d.info.name] = np.full(size, fallback)
    return out


def _output_error(refs: list[dict], got: list[dict], outputs: list[str], splits, softmax) -> float:
    """The worst output part's relative error, as verified; behind a Softmax (`softmax`), the relative error of its
    logits' margins among each row's top classes (verify.logits.top_margins_rel_l2): probabilities near 0 or 1 would
    make a gain depend on which samples probe it."""
    if softmax is not None:
        return top_margins_rel_l2([r[softmax.name] for r in refs], [g[softmax.name] for g in got], softmax)
    return worst_part_rel_l2(_by_name(refs, outputs), _by_name(got, outputs), splits)


def _measure(model: ir.Model, decisions: list[Decision], samples: list[dict], round_to: int,
             progress, method: str | None = None) -> tuple[dict, str]:
    """(per conv name, (probe ranks, gains measured there); how they were measured): the model-output error
    (_output_error) / the conv's own relative error, with only that conv rewritten (whitened factors) at each probe
    rank; to first order (linear_gains) when that costs less and the model's ops all have gradient rules, else by
    running the model. `method` EXACT or FIRST_ORDER forces one (first order then raises what stops it)."""
    softmax = softmax_input(model)
    outputs = [softmax.name] if softmax else measured_outputs(model)  # a decision (ArgMax...): its scores
    splits = output_splits(model)
    plans = [(d, [r for r in probe_ranks(d, round_to) if r < d.numerical]) for d in _live(decisions)]
    how = "exact probes (cheaper here than first order)" if method is None else "exact probes (asked for)"
    if method != EXACT:
        try:
            types = measured_types(model, samples[0])
            if method == FIRST_ORDER or linear_gains.cheaper(
                    model, decisions, plans, linear_gains.directions_per_sample(types[0], softmax, outputs, splits)):
                return (linear_gains.measure(model, plans, samples, softmax, outputs, splits, types, progress),
                        FIRST_ORDER)
        except (Unsupported, OneByOneError) as exc:  # e.g. an op without a gradient rule: exact probes measure any
            if method == FIRST_ORDER:
                raise
            how = f"exact probes (first order not possible: {exc})"
    return _exact(model, plans, samples, softmax, outputs, splits, progress), how


def _exact(model: ir.Model, plans: list[tuple[Decision, list[int]]], samples: list[dict], softmax, outputs, splits,
           progress) -> dict:
    """Per conv name, (probe ranks, gains) from running the rewritten conv and the model's tail at each probe."""
    reference = Probe(model, outputs, "original (sensitivity)", only=True)
    refs = [reference.run(f) for f in samples]
    del reference  # its session (weights repacked, arena) is not needed past here
    total, done = sum(len(p) for _, p in plans), 0
    measured: dict[str, tuple[list[int], list[float]]] = {}
    for d, rank, conv_out, original_local, got in probe_walk.walk(model, plans, samples, outputs):
        final = _output_error(refs, got, outputs, splits, softmax)
        local = worst_part_rel_l2(_by_name(original_local, [conv_out]), _by_name(got, [conv_out]))
        if local > 1e-6:
            rs, gs = measured.setdefault(d.info.name, ([], []))
            rs.append(rank)
            gs.append(final / local)
        done += 1
        if progress:
            progress(done, total)
    return measured
