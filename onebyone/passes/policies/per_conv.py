"""The shape of policies that decide each conv on its own: a rank from the conv's spectrum, kept only below break-even."""

from __future__ import annotations

import dataclasses

from onebyone.passes import plan
from onebyone.passes.policies.base import Policy


@dataclasses.dataclass(frozen=True)
class PerConv(Policy):
    """Each candidate conv gets `rank_for(d)` (rounded); a rank not strictly below break-even would not lower MACs,
    so the conv is left alone with `not_below(d, rank)` as the reason."""

    def rank_for(self, d: plan.Decision) -> int:
        raise NotImplementedError

    def not_below(self, d: plan.Decision, rank: int) -> str:
        return (f"rank {rank} ({self.describe()}) is not below break-even {d.break_even:.1f}: it would not "
                "lower MACs")

    def assign(self, decisions, gains=None) -> None:
        for d in decisions:
            if d.info.skip_reason is not None:
                continue
            rank = self.rounded(self.rank_for(d), d.info.matrix_shape_of(d.form)[0])
            if rank >= d.break_even:
                plan.reject(d, self.not_below(d, rank), asked_rank=rank)
            else:
                plan.accept(d, rank)
