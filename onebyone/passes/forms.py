"""Which form each conv takes when several apply (a kxk conv: the input form, 1x1 then kxk, the output form, kxk then
1x1, the Tucker-2 form, 1x1 then kxk then 1x1, and for a 2D or 3D kernel the spatial form, kh x 1 then 1 x kw or
kd x 1 x 1 then 1 x kh x kw).

A preferred form is chosen per conv before the policy chooses ranks, from the predicted error curves of its forms
(the weight's spectra, or the spectra whitened by calibration data) against their MACs: the form whose error is lower
over the range of costs a policy may ask for (the mean squared error at 0.9, 0.8, ..., 0.1 of the conv's MACs) wins.
The steps before the ranks serve that form (the sensitivity probes, the timing micro-models). A MAC budget then
chooses form and rank together among every form's ranks (policies.budget), so a conv whose preferred form loses at
the cost the budget gives it takes the other; a time budget likewise, each conv timed in each of its forms. With
`lossless_first` (the exact policy), a form that is lossless below its break-even wins over one that is not, the
cheaper lossless one among several.
"""

from __future__ import annotations

import contextlib

import numpy as np

from onebyone.passes import cost
from onebyone.passes.plan import Decision

FRACTIONS = np.linspace(0.9, 0.1, 9)  # of the conv's MACs, where the forms' predicted errors are compared


@contextlib.contextmanager
def in_form(d: Decision, form: str):
    """`d` read as if it had `form` (its spectrum, ranks and MACs), its own form back afterwards."""
    keep, d.form = d.form, form
    try:
        yield d
    finally:
        d.form = keep


@contextlib.contextmanager
def switched_to(decisions: list[Decision], form: str):
    """The candidate decisions that have `form` besides their own, read as if they had it (their forms back
    afterwards)."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(in_form(d, form)) for d in decisions
               if d.candidate and form != d.form and form in d.info.forms]


def error_at_costs(d: Decision, form: str) -> np.ndarray:
    """The predicted relative error of `form` at each of FRACTIONS of the conv's MACs: at the largest rank that
    costs no more (1.0 where no rank is that cheap)."""
    with in_form(d, form):
        curve = d.error_curve()
        ranks = np.arange(1, cost.max_profitable_rank(d.break_even) + 1)
        macs = np.array([d.macs_at(int(r)) for r in ranks], dtype=float)
    out = []
    for f in FRACTIONS:
        fits = ranks[macs <= f * d.info.macs]
        out.append(float(curve[min(int(fits[-1]), len(curve) - 1)]) if len(fits) else 1.0)
    return np.array(out)


def _lossless_macs(d: Decision, form: str) -> int | None:
    """The MACs of `form` at its numerical rank when that is below its break-even (lossless), else None."""
    with in_form(d, form):
        return d.macs_at(max(d.numerical, 1)) if d.numerical < d.break_even else None


def choose(d: Decision, lossless_first: bool = False) -> None:
    """Set `d.form` (and `d.form_choice`, the reason) among the conv's forms (`d.info.forms`); nothing to choose when
    only one applies."""
    forms = list(d.info.forms)
    if len(forms) < 2:
        return
    if lossless_first:
        exact = {f: m for f in forms if (m := _lossless_macs(d, f)) is not None}
        if exact:
            d.form = min(exact, key=lambda f: (exact[f], forms.index(f)))
            d.form_choice = "lossless at the fewest MACs: " + ", ".join(f"{f} {m:,}" for f, m in exact.items())
            return
    errors = {f: error_at_costs(d, f) for f in forms}
    scores = {f: float(np.mean(e**2)) for f, e in errors.items()}
    d.form = min(forms, key=lambda f: (scores[f], forms.index(f)))
    half = int(np.argmin(np.abs(FRACTIONS - 0.5)))
    d.form_choice = ("lower predicted error at equal MACs (at half the MACs: "
                     + ", ".join(f"{f} {errors[f][half]:.3f}" for f in forms) + ")")
