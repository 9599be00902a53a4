"""The held-out rule: which calibration samples choose between candidates instead of fitting them.

Every HOLDOUT_EVERY-th sample is held out, at most HOLDOUT_MAX of them: the model-level check runs two or three
rewritten models over the held-out samples, and 64 samples already tell apart errors that differ by a few percent
(its relative error is a mean over all their positions), so past 256 samples more held-out samples would add runs,
not information. Past HOLDOUT_MAX, the held-out ones are a fixed random choice (seed 0) among the every-4th places,
not every 2nd or 3rd of them: calibration sets often cycle through sources or classes, and a regular step would
alias with the cycle (the bundled image sets cycle through 8 photos: every 8th sample is the same photo). The places
not held out are not fitted on either (calibrated.source.fit_samples), so the fit does not depend on HOLDOUT_MAX.

A candidate fitted on the calibration data is kept over weight-only SVD only when it wins in CONFIDENCE of the
bootstrap resamples of the held-out samples (win_share): a lower error within the noise of a few held-out samples
goes to weight-only SVD, which fitted nothing and so cannot have fitted the calibration set's quirks (open_nsfw at
--time 0.6 with the 8 bundled photos: data-aware 0.81 against weight-only 0.84 on 8 held-out crops of 2 photos, and
then probabilities moved by 0.36 against 0.008 on the evaluation photos)."""

from __future__ import annotations

import functools

import numpy as np

from onebyone.verify.metrics import resampled_errors

HOLDOUT_EVERY = 4  # every 4th calibration sample is held out ...
HOLDOUT_MAX = 64  # ... but at most this many
CONFIDENCE = 0.9  # a fitted candidate is kept over weight-only SVD when it wins in this share of resamples ...
RESAMPLES = 1000  # ... of the held-out samples (win_share)


def is_holdout_place(index: int) -> bool:
    """Whether sample `index` is at an every-HOLDOUT_EVERY-th place: held out, or left out of the fit when more than
    HOLDOUT_MAX places are (see the module docstring)."""
    return index % HOLDOUT_EVERY == HOLDOUT_EVERY - 1


@functools.lru_cache(maxsize=64)
def _held(count: int) -> frozenset[int]:
    places = np.array([i for i in range(count) if is_holdout_place(i)], dtype=int)
    if len(places) > HOLDOUT_MAX:
        places = np.random.default_rng(0).choice(places, HOLDOUT_MAX, replace=False)
    return frozenset(int(i) for i in places)


def is_held_out(index: int, count: int) -> bool:
    """Whether sample `index` of `count` is held out (none is when there are fewer than HOLDOUT_EVERY; at most
    HOLDOUT_MAX are)."""
    return index in _held(count)


def in_held_out(index: int, count: int) -> bool:
    """Whether item `index` of a list of `count` is in held_out(that list)."""
    return is_held_out(index, count) or count < HOLDOUT_EVERY


def held_out(items: list) -> list:
    """The held-out part of a per-calibration-sample list (the samples themselves, or one output per sample); all of
    it when there are too few to hold any out."""
    held = _held(len(items))
    return [item for i, item in enumerate(items) if i in held] or list(items)


def win_share(candidate: list[np.ndarray], baseline: list[np.ndarray], resamples: int = RESAMPLES) -> float:
    """The share of bootstrap resamples of the held-out samples (seeded; the same resample for both) in which
    `candidate`'s error is below `baseline`'s, each given as per-sample sums (verify.metrics.part_sums): how sure the
    held-out samples are that the candidate is better, not only that it measured lower on them once."""
    count = len(candidate[0]) if candidate else 0
    if count == 0:
        return 0.0
    draws = np.random.default_rng(0).integers(0, count, size=(resamples, count))
    return float(np.mean(resampled_errors(candidate, draws) < resampled_errors(baseline, draws)))
