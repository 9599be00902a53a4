"""Timing models side by side (any runtime's callables; onnxruntime sessions as deployed, with a chosen thread count):
warm-up, repeats alternating between the models compared, medians and a noise estimate, and the paired per-round
ratio with its confidence interval, so that a ratio is measured side by side, never from lone numbers."""

from __future__ import annotations

import dataclasses
import time

import numpy as np

TARGET_SAMPLE_S = 2e-3  # each timed sample runs the model enough times to last about this long


@dataclasses.dataclass(frozen=True)
class Timing:
    """Median milliseconds per run and the noise of that median (relative: half the interquartile range over the
    median); `samples`: the timed samples (ms) in the order they were taken, alternating with the models compared."""

    ms: float
    noise: float
    samples: tuple[float, ...] = dataclasses.field(default=(), repr=False, compare=False)

    def faster_than(self, other: "Timing") -> bool:
        """Faster than `other` by more than the noise of either measurement."""
        return self.ms < other.ms * (1 - max(self.noise, other.noise, 0.01))

    def summary(self) -> dict:
        return {"ms": self.ms, "noise": self.noise}

    @classmethod
    def of(cls, samples) -> "Timing":
        """Median and noise of `samples` (ms), which it keeps."""
        q1, med, q3 = np.percentile(samples, [25, 50, 75])
        return cls(float(med), float((q3 - q1) / 2 / med) if med > 0 else 0.0, tuple(float(v) for v in samples))


MARGIN = 0.01  # "faster" means at least 1% faster
CONFIDENCE = 0.95


@dataclasses.dataclass(frozen=True)
class Ratio:
    """The optimized model's time over the original's, per alternating round (each round times both, one right after
    the other, so that drifts of a shared machine cancel): the median ratio and a distribution-free confidence
    interval for it (order statistics of the rounds, CONFIDENCE two-sided)."""

    median: float
    lower: float
    upper: float
    rounds: int

    @property
    def faster(self) -> bool:
        """Faster by more than MARGIN with confidence: the whole interval is below 1 - MARGIN."""
        return self.upper < 1 - MARGIN

    @property
    def decided(self) -> bool:
        """The interval lies on one side of 1 - MARGIN (more rounds would not change the verdict much)."""
        return self.upper < 1 - MARGIN or self.lower >= 1 - MARGIN


def paired_ratio(before: Timing, after: Timing) -> Ratio:
    """The Ratio of `after` to `before` from their samples, taken alternating (round k of each)."""
    r = np.sort(np.asarray(after.samples[: len(before.samples)]) / np.asarray(before.samples[: len(after.samples)]))
    n = len(r)
    if n == 0:
        raise ValueError("no paired samples")
    lo, hi = _median_interval(n)
    return Ratio(float(np.median(r)), float(r[lo]), float(r[hi]), n)


def _median_interval(n: int) -> tuple[int, int]:
    """Indices (lo, hi) of the sorted sample bounding its median with CONFIDENCE (binomial order statistics); the
    whole range when n is too small for that."""
    from math import comb

    tail = (1 - CONFIDENCE) / 2
    cdf, k = 0.0, 0
    while k < n:
        nxt = cdf + comb(n, k) / 2**n
        if nxt > tail:
            break
        cdf, k = nxt, k + 1
    lo = max(k - 1, 0)
    return lo, n - 1 - lo


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
    return [Timing.of(s) for s in samples]


def timed_session(model, threads: int, label: str = "timed model"):
    """An onnxruntime session to time beside others in this process: with several threads its idle threads sleep, so
    that they do not take the cores of the session timed next (spinning, open_nsfw's convs timed one by one summed
    to 4x the whole model)."""
    from onebyone.verify.onnxruntime_run import session

    return session(model, label, threads, spinning=threads == 1)


def time_models(models: list, feeds: list[dict], threads: int = 0, repeats: int = 15) -> list[Timing]:
    """Median time of each model (ir.Model or proto) on its feed, measured alternating in one process."""
    runs = [_runner(timed_session(m, threads), f) for m, f in zip(models, feeds)]
    return compare(runs, repeats)
