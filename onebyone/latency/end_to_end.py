"""Never ship a slower model: the whole model timed end to end, original and optimized alternating in one process on
the runtime that will run it; rewrites are backed off until the optimized model is faster beyond the noise."""

from __future__ import annotations

import onnx_ir as ir

from onebyone.latency import timer


def time_pair(original: ir.Model, optimized: ir.Model, feed: dict, latency, repeats: int = 15, max_rounds: int = 4):
    """(original, optimized) Timings, measured alternating on the latency model's runtime; while the paired ratio's
    confidence interval straddles the "faster" line, `repeats` more rounds are added (at most `max_rounds` batches)."""
    before, after = latency.time_models([original, optimized], [feed, feed], repeats)
    for _ in range(max_rounds - 1):
        if timer.paired_ratio(before, after).decided:
            break
        more_before, more_after = latency.time_models([original, optimized], [feed, feed], repeats)
        before = timer.Timing.of(before.samples + more_before.samples)
        after = timer.Timing.of(after.samples + more_after.samples)
    return before, after


def is_faster(before: timer.Timing, after: timer.Timing) -> bool:
    """Faster beyond the noise: by the paired ratio's confidence interval when the rounds were kept, else by the
    medians and their noise."""
    if before.samples and after.samples:
        return timer.paired_ratio(before, after).faster
    return after.faster_than(before)


def ensure_faster(original: ir.Model, optimized: ir.Model, report, rebuild, latency, feed: dict, max_steps: int = 12):
    """(model, report): `optimized` if it is measured faster than `original` beyond the noise; else the rewrite is
    redone (`rebuild(keep)` -> (model, report), `keep` naming the convs to leave alone) with the rewritten conv that
    saves the least measured time left alone, until it is faster or nothing is rewritten. `report.timing` holds the
    runtime, both end-to-end times, the measured, predicted and ceiling speedups and what was backed off."""
    keep: dict[str, str] = {}
    why = f"backed off: with it the model was not faster end to end on {latency.runtime['name']}"
    for _ in range(max_steps):
        before, after = time_pair(original, optimized, feed, latency)
        rewritten = [l for l in report.layers if l.action == "rewritten" and l.time_before_ms is not None]
        if is_faster(before, after) or not rewritten:
            break
        worst = min(rewritten, key=lambda l: l.time_before_ms - l.time_after_ms)
        keep[worst.name] = why
        optimized, report = rebuild(dict(keep))
    else:  # out of steps: the model last rebuilt is the one to report on
        before, after = time_pair(original, optimized, feed, latency)
    report.timing = _summary(report, before, after, latency, sorted(keep))
    return optimized, report


def _summary(report, before, after, latency, backed_off: list[str]) -> dict:
    layers = [l for l in report.layers if l.time_before_ms is not None]
    saved = sum(l.time_before_ms - l.time_after_ms for l in layers if l.action == "rewritten")
    targeted = sum(l.time_before_ms for l in layers)
    t = before.ms
    # per-conv micro-models may add up to more than the whole model (fusion, caches): then nothing is left untouched
    rest = max(t - targeted, 0.0)
    whole = rest + targeted
    return {
        "runtime": latency.runtime,
        "time_before_ms": round(before.ms, 4), "time_after_ms": round(after.ms, 4),
        "noise": round(max(before.noise, after.noise), 4),
        "speedup": round(before.ms / after.ms, 4) if after.ms > 0 else None,
        # with nothing rewritten both models are one graph: a measured difference is the noise of two sessions
        "faster": report.totals.rewritten > 0 and is_faster(before, after),
        **_ratio_fields(before, after),
        "predicted_speedup": round(whole / (whole - saved), 4) if whole - saved > 0 else None,
        "ceiling_speedup": round(whole / rest, 4) if rest > 0 else None,  # None: all time targeted
        "backed_off": backed_off,
        "rewritten": report.totals.rewritten,
    }


def _ratio_fields(before, after) -> dict:
    """The paired ratio (optimized / original time per round) with its confidence interval, when rounds were kept."""
    if not (before.samples and after.samples):
        return {}
    r = timer.paired_ratio(before, after)
    return {"ratio": round(r.median, 4), "ratio_interval": [round(r.lower, 4), round(r.upper, 4)], "rounds": r.rounds}


def default_feed(model: ir.Model, shapes: dict[str, tuple[int, ...]], samples: list[dict] | None) -> dict:
    """The first sample when there are samples, else seeded random inputs of the given shapes."""
    if samples:
        return samples[0]
    from onebyone.passes.input_shapes import graph_inputs
    from onebyone.verify.inputs import random_samples

    return random_samples(shapes, {v.name: v.dtype.numpy() for v in graph_inputs(model)}, count=1)[0]
