"""`budget`: keep a fraction of the targeted convs' MACs, split across convs by marginal output error per MAC saved."""

from __future__ import annotations

import dataclasses

import numpy as np

from onebyone.passes import budget as allocation
from onebyone.passes import plan
from onebyone.passes.policies.base import Policy, register


@register
@dataclasses.dataclass(frozen=True)
class Budget(Policy):
    """At most `macs` (a fraction in (0, 1]) of the candidate convs' MACs. Each conv's error per rank is its
    predicted error curve, times the factor source's model-output gains when there are any (with calibration data:
    how strongly the conv's error reaches the model's outputs); the greedy split spends MACs where they buy the most
    error reduction."""

    kind = "budget"
    uses_gains = True
    macs: float | None = None

    def validate(self) -> None:
        if self.macs is None or not 0 < self.macs <= 1:
            raise ValueError(f"policy 'budget' needs macs in (0, 1], got {self.macs}")

    def label(self) -> str:
        return f"MAC budget {self.macs}"

    def assign(self, decisions, gains=None) -> None:
        live = [d for d in decisions if d.info.skip_reason is None]
        curves = []
        for d in live:
            ranks = plan.candidate_ranks(d, self.round_to)
            errs = d.error_curve()
            if gains and d.info.name in gains:
                errs = errs * gains[d.info.name]
                d.output_error_curve = [round(float(e), 6) for e in errs]
            curves.append(allocation.Curve(d.info.name, ranks, errs[ranks],
                                           np.array([d.macs_at(int(r)) for r in ranks]), d.info.macs))
        targeted = sum(d.info.macs for d in live)
        chosen = allocation.allocate(curves, self.macs * targeted)
        for d in live:
            r = chosen[d.info.name]
            if r is None:
                plan.reject(d, f"left alone by the MAC budget ({self.macs} of {targeted:,} targeted MACs)")
            else:
                plan.accept(d, r)
