"""`exact`: the numerical rank at the weight dtype's precision, so the rewrite is lossless (the default)."""

from __future__ import annotations

import dataclasses

from onebyone.passes.policies.base import register
from onebyone.passes.policies.per_conv import PerConv


@register
@dataclasses.dataclass(frozen=True)
class Exact(PerConv):
    """Lossless rewrites only: the rank is the spectrum's numerical rank (the weight's, or on calibration data the
    whitened weight's, which makes the rewrite exact for inputs like those)."""

    kind = "exact"

    def label(self) -> str:
        return "exact (lossless only)"

    def rank_for(self, d) -> int:
        return d.numerical

    def not_below(self, d, rank: int) -> str:
        return (f"numerical rank {d.numerical} is not below break-even {d.break_even:.1f}: "
                "no lossless rewrite lowers MACs")
