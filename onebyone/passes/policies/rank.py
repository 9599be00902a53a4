"""`rank`: a fixed number of bottleneck channels per group, or a fixed fraction of the input channels per group."""

from __future__ import annotations

import dataclasses
import math

from onebyone.passes.policies.base import register
from onebyone.passes.policies.per_conv import PerConv


@register
@dataclasses.dataclass(frozen=True)
class Rank(PerConv):
    """`rank` channels per group: an int >= 1, or a fraction in (0, 1) of the input channels per group (rounded up)."""

    kind = "rank"
    rank: float | None = None

    def validate(self) -> None:
        if self.rank is None or self.rank <= 0 or (self.rank >= 1 and self.rank != int(self.rank)):
            raise ValueError(f"policy 'rank' needs rank as an int >= 1 or a fraction in (0, 1), got {self.rank}")

    def label(self) -> str:
        return f"rank {self.rank}"

    def rank_for(self, d) -> int:
        c = d.info.matrix_shape_of(d.form)[0]
        return int(self.rank) if self.rank >= 1 else math.ceil(self.rank * c)
