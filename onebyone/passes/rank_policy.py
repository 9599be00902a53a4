"""Rank policies: how many bottleneck channels (per group) a conv gets, from its weight's singular values."""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np

from onebyone.passes import factorize

PolicyKind = Literal["exact", "rank", "energy", "budget", "error"]


@dataclasses.dataclass(frozen=True)
class RankPolicy:
    """A rule that picks the per-group rank of each conv.

    - ``exact``: the numerical rank at the weight dtype's precision; the rewrite is lossless.
    - ``rank``: ``rank`` bottleneck channels per group; an int >= 1, or a fraction in (0, 1) of the
      input channels per group (rounded up).
    - ``energy``: the smallest rank keeping ``energy`` of the squared singular values (in every group).
    - ``budget``: keep a fraction ``macs`` of the targeted convs' MACs, split across convs by marginal output
      error per MAC saved (see passes.budget).
    - ``error``: the largest saving whose measured model-output error on calibration data stays under
      ``max_error`` (a search over budgets; needs calibration data).
    With calibration data (method ``data``) singular values are those of the whitened weight, so ``energy`` is
    the fraction of the expected output energy kept.
    ``round_to`` > 1 rounds the rank up to a multiple (hardware-friendly widths), capped at C/g.
    """

    kind: PolicyKind = "exact"
    rank: float | None = None
    energy: float | None = None
    round_to: int = 1
    macs: float | None = None
    max_error: float | None = None

    def __post_init__(self) -> None:
        for field in ("rank", "energy", "macs", "max_error"):
            value = getattr(self, field)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{field} must be a finite number, got {value}")
        if self.kind not in ("exact", "rank", "energy", "budget", "error"):
            raise ValueError(f"unknown policy {self.kind!r} (expected exact, rank, energy, budget or error)")
        if self.kind == "budget" and (self.macs is None or not 0 < self.macs <= 1):
            raise ValueError(f"policy 'budget' needs --macs in (0, 1], got {self.macs}")
        if self.kind == "error" and (self.max_error is None or self.max_error <= 0):
            raise ValueError(f"policy 'error' needs --max-error > 0, got {self.max_error}")
        if self.kind == "rank":
            if self.rank is None or self.rank <= 0 or (self.rank >= 1 and self.rank != int(self.rank)):
                raise ValueError(f"policy 'rank' needs --rank as an int >= 1 or a fraction in (0, 1), got {self.rank}")
        if self.kind == "energy" and (self.energy is None or not 0 < self.energy <= 1):
            raise ValueError(f"policy 'energy' needs --energy in (0, 1], got {self.energy}")
        if self.round_to < 1:
            raise ValueError(f"--round-to must be >= 1, got {self.round_to}")

    def describe(self) -> str:
        """A short human-readable form, e.g. 'energy 0.99, round to 8'."""
        text = {
            "exact": "exact (lossless only)", "rank": f"rank {self.rank}", "energy": f"energy {self.energy}",
            "budget": f"MAC budget {self.macs}", "error": f"max error {self.max_error}",
        }[self.kind]
        return text + (f", round to {self.round_to}" if self.round_to > 1 else "")

    def choose(self, svals: list[np.ndarray], matrix_shape: tuple[int, int], dtype: np.dtype) -> tuple[int, bool]:
        """(rank per group, lossless) for a conv whose per-group unfolded matrices have these singular values.

        `lossless` is true when the chosen rank is at least the numerical rank of every group, so the
        factorization reproduces the weight to the precision of its dtype.
        """
        c_per_group = matrix_shape[0]
        numerical = max(factorize.numerical_rank(s, matrix_shape, dtype) for s in svals)
        if self.kind in ("budget", "error"):
            raise ValueError(f"policy {self.kind!r} chooses ranks globally, not per conv")
        if self.kind == "exact":
            rank = numerical
        elif self.kind == "rank":
            rank = int(self.rank) if self.rank >= 1 else math.ceil(self.rank * c_per_group)
        else:
            rank = max(factorize.energy_rank(s, self.energy) for s in svals)
        rank = max(1, min(rank, c_per_group))
        if self.round_to > 1:
            rank = min(c_per_group, math.ceil(rank / self.round_to) * self.round_to)
        return rank, rank >= numerical
