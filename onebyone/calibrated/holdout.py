"""The held-out rule: which calibration samples choose between candidates instead of fitting them."""

from __future__ import annotations

HOLDOUT_EVERY = 4  # every 4th calibration sample is held out


def is_held_out(index: int, count: int) -> bool:
    """Whether sample `index` of `count` is held out (none is when there are fewer than HOLDOUT_EVERY)."""
    return count >= HOLDOUT_EVERY and index % HOLDOUT_EVERY == HOLDOUT_EVERY - 1


def in_held_out(index: int, count: int) -> bool:
    """Whether item `index` of a list of `count` is in held_out(that list)."""
    return is_held_out(index, count) or count < HOLDOUT_EVERY


def held_out(items: list) -> list:
    """The held-out part of a per-calibration-sample list (the samples themselves, or one output per sample); all of
    it when there are too few to hold any out."""
    return items[HOLDOUT_EVERY - 1 :: HOLDOUT_EVERY] or items
