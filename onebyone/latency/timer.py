"""Timing models on onnxruntime as deployed (CPU, a chosen thread count): warm-up, repeats alternating between the
models compared, medians and a noise estimate, so that a ratio is measured side by side, never from lone numbers."""

from __future__ import annotations

import dataclasses
import time

import numpy as np

TARGET_SAMPLE_S = 2e-3  # each timed sample runs the model enough times to last about this long


@dataclasses.dataclass(frozen=True)
class Timing:
    """Median milliseconds per run and the noise of that median (relative: half the interquartile range over the
    median)."""

    ms: float
    noise: float

    def faster_than(self, other: "Timing") -> bool:
        """Faster than `other` by more than the noise of either measurement."""
        return self.ms < other.ms * (1 - max(self.noise, other.noise, 0.01))


def _runner(sess, feed):
    names = [o.name for o in sess.get_outputs()]
    return lambda: sess.run(names, feed)


def compare(runs: list, repeats: int = 15, warmup: int = 3) -> list[Timing]:
    """Time each callable in `runs` (no arguments), alternating between them `repeats` times after `warmup` calls
    each; every timed sample loops a callable enough times to last ~TARGET_SAMPLE_S."""
    loops = []
    for run in runs:
        for _ in range(warmup):
            run()
        t0 = time.perf_counter()
        run()
        one = max(time.perf_counter() - t0, 1e-6)
        loops.append(max(1, int(TARGET_SAMPLE_S / one)))
    samples: list[list[float]] = [[] for _ in runs]
    for _ in range(repeats):
        for i, run in enumerate(runs):
            t0 = time.perf_counter()
            for _ in range(loops[i]):
                run()
            samples[i].append((time.perf_counter() - t0) / loops[i] * 1e3)
    out = []
    for s in samples:
        q1, med, q3 = np.percentile(s, [25, 50, 75])
        out.append(Timing(float(med), float((q3 - q1) / 2 / med) if med > 0 else 0.0))
    return out


def time_models(models: list, feeds: list[dict], threads: int = 0, repeats: int = 15) -> list[Timing]:
    """Median time of each model (ir.Model or proto) on its feed, measured alternating in one process."""
    from onebyone.verify.onnxruntime_run import session

    runs = [_runner(session(m, "timed model", threads), f) for m, f in zip(models, feeds)]
    return compare(runs, repeats)
