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
    time: float | None = None  # instead of macs: a fraction of the targeted convs' measured time

    def validate(self) -> None:
        if (self.macs is None) == (self.time is None):
            raise ValueError(f"policy 'budget' needs one of macs or time in (0, 1], got macs={self.macs}, time={self.time}")
        value = self.macs if self.macs is not None else self.time
        if not 0 < value <= 1:
            raise ValueError(f"policy 'budget' needs {'macs' if self.macs is not None else 'time'} in (0, 1], got {value}")

    @property
    def needs_latency(self) -> bool:
        return self.time is not None

    def label(self) -> str:
        return f"MAC budget {self.macs}" if self.macs is not None else f"time budget {self.time}"

    def assign(self, decisions, gains=None) -> None:
        live = [d for d in decisions if d.info.skip_reason is None]
        curves = []
        for d in live:
            ranks = self._ranks(d)
            errs = d.error_curve()
            if gains and d.info.name in gains:
                errs = errs * gains[d.info.name]
                d.output_error_curve = [round(float(e), 6) for e in errs]
            curves.append(allocation.Curve(d.info.name, ranks, errs[ranks], np.array([self._cost(d, int(r)) for r in ranks]),
                                           self._cost(d, None)))
        targeted = sum(self._cost(d, None) for d in live)
        fraction = self.macs if self.macs is not None else self.time
        chosen = allocation.allocate(curves, fraction * targeted)
        unit = f"{targeted:,} targeted MACs" if self.macs is not None else f"{targeted:.3f} ms of targeted convs"
        floor = sum(min([c.macs_full, *c.macs]) for c in curves)  # every conv at its cheapest option
        beyond = (f" (the {self.label()} is out of reach: every conv at its cheapest option keeps "
                  f"{floor / targeted:.3f} of {unit})") if targeted and fraction * targeted < floor else ""
        for d in live:
            r = chosen[d.info.name]
            if r is None:
                why = "" if len(self._ranks(d)) else "; no measured rank is faster than the conv"
                plan.reject(d, f"left alone by the {'MAC' if self.macs is not None else 'time'} budget "
                               f"({fraction} of {unit}){why}")
            else:
                plan.accept(d, r)
                d.reason += beyond

    def _ranks(self, d) -> np.ndarray:
        """The ranks this budget may give a conv: below break-even; with a time budget, only measured ranks whose
        pair is faster than the conv beyond the noise."""
        if self.time is None:
            return plan.candidate_ranks(d, self.round_to)
        return np.array([r for r in d.paying_ranks() if r % self.round_to == 0], dtype=int)

    def _cost(self, d, rank: int | None) -> float:
        """MACs, or measured ms, of the conv (rank None) or of its pair at `rank`."""
        if self.time is None:
            return d.info.macs if rank is None else d.macs_at(rank)
        return d.latency["before"].ms if rank is None else d.latency["after"][rank].ms
