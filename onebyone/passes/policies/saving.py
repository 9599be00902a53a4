"""`saving`: every candidate conv keeps at most a fixed fraction of its own MACs (a uniform per-conv budget: the
example of a policy added as one file plus its registration)."""

from __future__ import annotations

import dataclasses

from onebyone.passes import plan
from onebyone.passes.policies.base import register
from onebyone.passes.policies.per_conv import PerConv


@register
@dataclasses.dataclass(frozen=True)
class Saving(PerConv):
    """Each conv gets the largest candidate rank whose MACs are at most `macs` (a fraction in (0, 1)) of the conv's
    own; a conv that cannot get that cheap is left alone."""

    kind = "saving"
    macs: float | None = None

    def validate(self) -> None:
        if self.macs is None or not 0 < self.macs < 1:
            raise ValueError(f"policy 'saving' needs macs in (0, 1), got {self.macs}")

    def label(self) -> str:
        return f"each conv at most {self.macs} of its MACs"

    def rank_for(self, d) -> int:
        fits = [int(r) for r in plan.candidate_ranks(d, self.round_to) if d.macs_at(int(r)) <= self.macs * d.info.macs]
        return max(fits) if fits else d.info.matrix_shape_of(d.form)[0]

    def not_below(self, d, rank: int) -> str:
        return f"no rank keeps it within {self.macs} of its MACs"
