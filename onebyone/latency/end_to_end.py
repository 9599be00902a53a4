"""Never ship a slower model: the whole model timed end to end, original and optimized alternating in one process on
the runtime that will run it; rewrites are backed off until the optimized model is faster beyond the noise."""

from __future__ import annotations

import onnx_ir as ir

from onebyone.latency import timer


def time_pair(original: ir.Model, optimized: ir.Model, feed: dict, threads: int, repeats: int = 15):
    """(original, optimized) Timings, measured alternating."""
    return timer.time_models([original, optimized], [feed, feed], threads, repeats)


def ensure_faster(original: ir.Model, optimized: ir.Model, report, rebuild, latency, feed: dict, max_steps: int = 12):
    """(model, report): `optimized` if it is measured faster than `original` beyond the noise; else the rewrite is
    redone (`rebuild(keep)` -> (model, report), `keep` naming the convs to leave alone) with the rewritten conv that
    saves the least measured time left alone, until it is faster or nothing is rewritten. `report.timing` holds the
    runtime, both end-to-end times, the measured, predicted and ceiling speedups and what was backed off."""
    keep: dict[str, str] = {}
    why = f"backed off: with it the model was not faster end to end on {latency.runtime['name']}"
    for _ in range(max_steps):
        before, after = time_pair(original, optimized, feed, latency.threads)
        rewritten = [l for l in report.layers if l.action == "rewritten" and l.time_before_ms is not None]
        if after.faster_than(before) or not rewritten:
            break
        worst = min(rewritten, key=lambda l: l.time_before_ms - l.time_after_ms)
        keep[worst.name] = why
        optimized, report = rebuild(dict(keep))
    else:  # out of steps: the model last rebuilt is the one to report on
        before, after = time_pair(original, optimized, feed, latency.threads)
    report.timing = _summary(report, before, after, latency, sorted(keep))
    return optimized, report


def _summary(report, before, after, latency, backed_off: list[str]) -> dict:
    layers = [l for l in report.layers if l.time_before_ms is not None]
    saved = sum(l.time_before_ms - l.time_after_ms for l in layers if l.action == "rewritten")
    targeted = sum(l.time_before_ms for l in layers)
    t = before.ms
    return {
        "runtime": latency.runtime,
        "time_before_ms": round(before.ms, 4), "time_after_ms": round(after.ms, 4),
        "noise": round(max(before.noise, after.noise), 4),
        "speedup": round(before.ms / after.ms, 4) if after.ms > 0 else None,
        "faster": bool(after.faster_than(before)),
        "predicted_speedup": round(t / (t - saved), 4) if t - saved > 0 else None,
        "ceiling_speedup": round(t / (t - targeted), 4) if t - targeted > 0 else None,  # None: all time targeted
        "backed_off": backed_off,
        "rewritten": report.totals.rewritten,
    }


def default_feed(model: ir.Model, shapes: dict[str, tuple[int, ...]], samples: list[dict] | None) -> dict:
    """The first sample when there are samples, else seeded random inputs of the given shapes."""
    if samples:
        return samples[0]
    from onebyone.passes.input_shapes import graph_inputs
    from onebyone.verify.inputs import random_samples

    return random_samples(shapes, {v.name: v.dtype.numpy() for v in graph_inputs(model)}, count=1)[0]
