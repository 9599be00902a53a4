"""`budget`: keep a fraction of the targeted convs' MACs, split across convs by marginal output error per MAC saved."""

from __future__ import annotations

import dataclasses

import numpy as np

from onebyone.passes import budget as allocation
from onebyone.passes import plan
from onebyone.passes.forms import in_form
from onebyone.passes.policies.base import Policy, register


@register
@dataclasses.dataclass(frozen=True)
class Budget(Policy):
    """At most `macs` (a fraction in (0, 1]) of the candidate convs' MACs, or `time` of their measured time. Each
    conv's error per rank is its predicted error curve, times the factor source's model-output gains when there are
    any (with calibration data: how strongly the conv's error reaches the model's outputs); the greedy split spends
    MACs (or milliseconds) where they buy the most error reduction, over every form's ranks (form and rank chosen
    together)."""

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
        options = {d.info.name: self._options(d, gains) for d in live}
        curves = [allocation.Curve(d.info.name, np.arange(len(options[d.info.name][0])), options[d.info.name][1],
                                   options[d.info.name][2], self._cost(d, None)) for d in live]
        targeted = sum(self._cost(d, None) for d in live)
        fraction = self.macs if self.macs is not None else self.time
        chosen = allocation.allocate(curves, fraction * targeted)
        unit = f"{targeted:,} targeted MACs" if self.macs is not None else f"{targeted:.3f} ms of targeted convs"
        floor = sum(min([c.macs_full, *c.macs]) for c in curves)  # every conv at its cheapest option
        beyond = (f" (the {self.label()} is out of reach: every conv at its cheapest option keeps "
                  f"{floor / targeted:.3f} of {unit})") if targeted and fraction * targeted < floor else ""
        for d in live:
            i = chosen[d.info.name]
            keys, errs, costs = options[d.info.name]
            preferred, gain = d.error_curve(), gains.get(d.info.name) if gains else None
            if i is not None and self._take_form(d, keys, errs, costs, i) and gain is not None:
                gain = _gain_at(preferred, gain, d.error_curve())
            if gain is not None:
                d.output_error_curve = [round(float(e), 6) for e in d.error_curve() * gain]
            if i is None:
                why = "" if len(self._ranks(d)) else "; no measured rank is faster than the conv"
                plan.reject(d, f"left alone by the {'MAC' if self.macs is not None else 'time'} budget "
                               f"({fraction} of {unit}){why}")
            else:
                plan.accept(d, keys[i][1])
                d.reason += beyond

    def _take_form(self, d, keys, errs, costs, i: int) -> bool:
        """Give `d` the form of its option `i`, saying why, when that is not the form chosen before the budget;
        whether it changed."""
        form, rank = keys[i]
        if form == d.form:
            return False
        others = ", ".join(f for f in dict.fromkeys(f for f, _ in keys) if f != form)
        unit, per = ("MACs", "MAC") if self.macs is not None else ("ms", "ms")
        d.form_choice = (f"chosen by the {self.label()} over {others}: rank {rank} of this form had the smallest "
                         f"predicted error increase per {per} saved (predicted "
                         f"{errs[i]:.3f} at {costs[i]:,.4g} {unit}); before the budget, {d.form} was ahead: "
                         f"{d.form_choice}")
        d.form = form
        return True

    def _options(self, d, gains) -> tuple[list[tuple[str, int]], np.ndarray, np.ndarray]:
        """The conv's options: (form, rank) pairs with their predicted output errors (times the conv's gain) and
        costs. With a MAC budget, the ranks of every form that applies to the conv, so that the budget chooses form
        and rank together (the model-output gains were measured in the conv's preferred form: another form's rank
        gets the gain measured where the preferred form's predicted error is the same); with a time budget, the
        measured ranks of every form that was timed."""
        forms = [f for f in dict.fromkeys([d.form, *d.info.forms]) if self.macs is not None or d.latencies.get(f)]
        gain = gains.get(d.info.name) if gains else None
        preferred = d.error_curve()
        keys, errs, costs = [], [], []
        for form in forms:
            with in_form(d, form):
                ranks = self._ranks(d)
                curve = d.error_curve()
                if gain is not None:
                    curve = curve * (gain if form == forms[0] else _gain_at(preferred, gain, curve))
                keys += [(form, int(r)) for r in ranks]
                errs += [float(curve[min(int(r), len(curve) - 1)]) for r in ranks]
                costs += [self._cost(d, int(r)) for r in ranks]
        return keys, np.array(errs, dtype=float), np.array(costs, dtype=float)

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


def _gain_at(curve: np.ndarray, gain: np.ndarray, errors: np.ndarray) -> np.ndarray:
    """The gains of a conv's preferred form (`gain`, per rank of its error `curve`) read at other `errors`: the gain
    where the preferred form's predicted error is the same (interpolated; clamped at both ends)."""
    order = np.argsort(curve, kind="stable")
    return np.interp(errors, curve[order], gain[:len(curve)][order])
