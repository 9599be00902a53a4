"""A global MAC budget split across convs by marginal output error per MAC saved (greedy on error curves)."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class Curve:
    """One conv's options: `ranks` (ascending, all below break-even) with their predicted relative output
    errors and costs (MACs, or measured milliseconds); `macs_full` is the conv's cost when it is left alone
    (error 0)."""

    name: str
    ranks: np.ndarray
    errors: np.ndarray
    macs: np.ndarray
    macs_full: float


def allocate(curves: list[Curve], budget_macs: float) -> dict[str, int | None]:
    """A rank (or None: leave the conv alone) per conv, so that the total cost (MACs or measured time) of these
    convs is at most `budget_macs` when that is reachable (else every conv at its cheapest option).

    Greedy: from "all convs untouched", repeatedly move one conv to the lower-MAC option with the smallest increase
    of squared error per MAC saved, until the budget is met. Squared relative errors add up across layers as the
    proxy of the model's output error.
    """
    state: dict[str, int | None] = {c.name: None for c in curves}
    cost = {c.name: c.macs_full for c in curves}
    err2 = {c.name: 0.0 for c in curves}
    total = sum(cost.values())
    by_name = {c.name: c for c in curves}
    while total > budget_macs:
        best = None
        for c in curves:
            if len(c.ranks) == 0:
                continue
            saved = cost[c.name] - c.macs
            ok = saved > 0
            if not ok.any():
                continue
            ratio = np.where(ok, (c.errors**2 - err2[c.name]) / np.where(ok, saved, 1), np.inf)
            # among options, prefer the smallest error increase per MAC; ties go to the larger saving
            i = int(np.lexsort((-saved, ratio))[0])
            if ok[i] and (best is None or ratio[i] < best[0]):
                best = (ratio[i], c.name, i)
        if best is None:
            break  # every conv is at its cheapest option
        _, name, i = best
        c = by_name[name]
        total -= cost[name] - c.macs[i]
        cost[name] = c.macs[i]
        err2[name] = float(c.errors[i] ** 2)
        state[name] = int(c.ranks[i])
    return state
