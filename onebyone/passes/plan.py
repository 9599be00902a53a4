"""Per-conv decisions: which spectrum ranks are read from, the rank each conv gets, and whether it pays.

A Decision is a value the pass's steps refine (a policy accepts or rejects it, the factor source records its fit and
measured error, or backs it off); the report's layer is written from it once, at the end (`layer_report`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from onebyone.passes import cost, factorize
from onebyone.passes.analysis import ConvInfo, form_of, numerical_ranks, tucker2_knob
from onebyone.report import LayerReport


@dataclasses.dataclass
class Decision:
    """What to do with one conv: a candidate (`rank` set exactly when it is to be rewritten) or a skip with its
    `reason`. The other fields record what was decided and measured on the way."""

    info: ConvInfo
    reason: str = ""
    rank: int | None = None
    asked_rank: int | None = None  # the rank a policy asked for when it rejected the conv (reported)
    lossless: bool = False
    lossless_on: str | None = None
    energy_kept: float | None = None
    predicted_error: float | None = None
    measured_error: float | None = None
    weight_rel_error: float | None = None
    fit: str | None = None
    output_error_curve: list[float] | None = None
    moments: Any = None  # the factor source's statistics of this conv's input (calibration moments), if any
    form: str = "input"  # the factorization form (analysis.FORMS) the rank is of
    latencies: dict = dataclasses.field(default_factory=dict, repr=False)  # form -> its `latency`
    form_choice: str | None = None  # why this form, when several applied (see passes.forms)
    spectra: dict = dataclasses.field(default_factory=dict, repr=False)  # form -> (svals, energies) from data
    _numerical: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def latency(self) -> dict | None:
        """The current form's times measured on the target runtime: {"before": Timing, "after": {rank: Timing}}
        (None: not measured)."""
        return self.latencies.get(self.form)

    @latency.setter
    def latency(self, value: dict | None) -> None:
        self.latencies[self.form] = value

    @property
    def candidate(self) -> bool:
        return self.info.skip_reason is None

    def _spectrum_key(self) -> str | None:
        """Where the current form's data spectrum is kept (Tucker-2: its input side, present with both sides')."""
        if self.form == "tucker2":
            return "input" if "input" in self.spectra and "output" in self.spectra else None
        return self.form if self.form in self.spectra else None

    @property
    def data_svals(self) -> list[np.ndarray] | None:
        """The spectrum of the current form whitened by calibration data (None without data; Tucker-2: its input
        side's, the output side's being spectra["output"])."""
        key = self._spectrum_key()
        return self.spectra[key][0] if key else None

    @property
    def data_energy(self) -> list[float] | None:
        key = self._spectrum_key()
        return self.spectra[key][1] if key else None

    @property
    def svals(self) -> list[np.ndarray]:
        """The spectrum ranks are read from: whitened by data when there is calibration, else the weight's (both
        unfolded for the current form)."""
        return self.data_svals if self.data_svals is not None else self.info.svals_of(self.form)

    def _side(self, side: str) -> tuple[list[np.ndarray], list[float]]:
        """The input- or output-side spectrum and energies in use (data's when the decision has both sides')."""
        if self._spectrum_key() is not None:
            return self.spectra[side]
        svals = self.info.svals_of(side)
        return svals, [float((s**2).sum()) for s in svals]

    @property
    def numerical(self) -> int:
        """Rank at the weight dtype's precision of the spectrum in use (weight, or weight whitened by data;
        Tucker-2: the smallest rank knob reaching both sides' numerical ranks)."""
        if self.form not in self._numerical:
            if self.form == "tucker2":
                ranks = numerical_ranks(self.info, self._side("input")[0], self._side("output")[0])
                self._numerical[self.form] = tucker2_knob(self.info, ranks)
            else:
                shape = self.info.matrix_shape_of(self.form)
                self._numerical[self.form] = max(factorize.numerical_rank(s, shape, self.info.weight.dtype)
                                                 for s in self.svals)
        return self._numerical[self.form]

    @property
    def break_even(self) -> float:
        """The current form's break-even rank."""
        return self.info.break_even(self.form)

    def error_curve(self) -> np.ndarray:
        """Predicted relative output error for ranks 0..max (weight-energy based without calibration data; Tucker-2:
        √(e_in(r1)² + e_out(r2)²) over its rank knob, the bound of the truncated HOSVD, with each side's curve)."""
        if self.form == "tucker2":
            e_in, e_out = (factorize.error_curve(*self._side(side)) for side in ("input", "output"))
            top = self.info.matrix_shape_of("tucker2")[0]
            pairs = [self.info.tucker2_ranks(r) for r in range(1, top + 1)]
            both = [np.hypot(e_in[min(a, len(e_in) - 1)], e_out[min(b, len(e_out) - 1)]) for a, b in pairs]
            return np.minimum(np.array([1.0] + both), 1.0)
        if self.data_svals is not None:
            return factorize.error_curve(self.data_svals, self.data_energy)
        svals = self.info.svals_of(self.form)
        return factorize.error_curve(svals, [float((s**2).sum()) for s in svals])

    def macs_at(self, rank: int) -> int:
        return self.info.macs_of(self.form, rank)

    def paying_ranks(self) -> list[int]:
        """Measured ranks whose rewritten pair beats the original conv by more than the noise (none unmeasured)."""
        if not self.latency:
            return []
        before = self.latency["before"]
        return sorted(r for r, t in self.latency["after"].items() if t.faster_than(before))

    def params_at(self, rank: int) -> int:
        i = self.info
        bias = i.out_channels if i.has_bias or self.moments is not None else 0
        if self.form == "tucker2":
            r1, r2 = i.tucker2_ranks(rank)
            return int(i.groups * r1 * (i.in_channels // i.groups + r2 * i.kernel_size) + i.out_channels * r2 + bias)
        if self.form == "output":
            return int(i.groups * rank * (i.in_channels // i.groups) * i.kernel_size + i.out_channels * rank + bias)
        if self.form == "spatial":
            first, other = i.spatial_taps
            return int(i.groups * rank * (i.in_channels // i.groups) * first + i.out_channels * rank * other + bias)
        return int(i.groups * rank * (i.in_channels // i.groups) + i.out_channels * rank * i.kernel_size + bias)


def start(info: ConvInfo, spectrum: tuple | dict | None = None, moments: Any = None) -> Decision:
    """A Decision with the facts of `info`, skipped (with the analysis's reason) until a rank is given, in the conv's
    first applicable form (passes.forms.choose may change it). `spectrum` (per-group singular values and energies,
    e.g. of the weight whitened by input statistics; a dict form -> spectrum for several forms, a bare one is the
    input form's) replaces the weight's own spectrum for choosing ranks; `moments` are the statistics it came from."""
    d = Decision(info, reason=info.skip_reason or "", moments=moments, form_choice=info.form_note)
    if info.forms:
        d.form = info.forms[0]
    if info.skip_reason is None and spectrum is not None:
        d.spectra = dict(spectrum) if isinstance(spectrum, dict) else {form_of(info.kernel): spectrum}
    return d


def candidate_ranks(d: Decision, round_to: int) -> np.ndarray:
    """Ranks below the current form's break-even that a budget may choose (multiples of round_to)."""
    top = cost.max_profitable_rank(d.break_even)
    step = max(1, round_to)
    return np.arange(step, top + 1, step)


def accept(d: Decision, rank: int) -> None:
    """Rewrite this conv at `rank` (per group): lossless when the rank reaches the numerical rank."""
    d.rank = d.asked_rank = rank
    d.lossless = rank >= d.numerical
    d.lossless_on = ("calibration data" if d.data_svals is not None else "all inputs") if d.lossless else None
    curve = d.error_curve()
    d.predicted_error = float(curve[min(rank, len(curve) - 1)])
    # Tucker-2: the energy its predicted error leaves (each side's truncation counted)
    d.energy_kept = 1.0 - d.predicted_error**2 if d.form == "tucker2" else _energy_kept(d.svals, rank)
    be = d.break_even
    on = " on calibration data" if d.data_svals is not None else ""
    of = f" ({d.form} form)" if d.form not in ("input", "pointwise") else ""
    pair = lambda r: " (ranks {}, {})".format(*d.info.tucker2_ranks(r)) if d.form == "tucker2" else ""  # noqa: E731
    if d.lossless:
        d.reason = f"lossless{on}{of}: numerical rank {d.numerical}{pair(d.numerical)} < break-even {be:.1f}"
    else:
        d.reason = (f"approximate{of}: rank {rank}{pair(rank)} of {d.info.matrix_shape_of(d.form)[0]} keeps "
                    f"{d.energy_kept:.4f} of the " + ("output energy" if on else "weight energy"))


def reject(d: Decision, reason: str, asked_rank: int | None = None) -> None:
    """Leave this conv alone, saying why (`asked_rank`: the rank that would not pay)."""
    d.rank = None
    d.asked_rank = asked_rank
    d.lossless = False
    d.lossless_on = None
    d.reason = reason


def layer_report(d: Decision) -> LayerReport:
    """The report's entry for one conv, written from the decision."""
    info, rewritten = d.info, d.rank is not None
    return LayerReport(
        name=info.name,
        action="rewritten" if rewritten else "skipped",
        reason=d.reason,
        kernel=list(info.kernel),
        form=d.form if d.candidate else form_of(info.kernel),
        form_choice=d.form_choice,
        in_channels=info.in_channels,
        out_channels=info.out_channels,
        groups=info.groups,
        strides=list(info.strides),
        input_shape=list(info.input_shape) if info.input_shape else None,
        output_shape=list(info.output_shape) if info.output_shape else None,
        weight_source=info.weight_source,
        rank=d.asked_rank,
        ranks=list(info.tucker2_ranks(d.asked_rank)) if d.form == "tucker2" and d.asked_rank else None,
        numerical_rank=d.numerical if d.candidate else None,
        break_even_rank=round(d.break_even if d.candidate else info.break_even_rank, 3),
        lossless=d.lossless and rewritten,
        macs_before=info.macs,
        macs_after=d.macs_at(d.rank) if rewritten else info.macs,
        params_before=info.params,
        params_after=d.params_at(d.rank) if rewritten else info.params,
        weight_rel_error=d.weight_rel_error,
        energy_kept=d.energy_kept,
        lossless_on=d.lossless_on if rewritten else None,
        predicted_error=d.predicted_error,
        measured_error=d.measured_error,
        fit=d.fit,
        error_curve=[round(float(e), 6) for e in d.error_curve()] if d.candidate else None,
        output_error_curve=d.output_error_curve,
        singular_values=[s.tolist() for s in info.svals_of(d.form)] if info.svals_of(d.form) else None,
        data_singular_values=[s.tolist() for s in d.data_svals] if d.data_svals is not None else None,
        op=info.op_type,
        rows=info.spatial_out if info.matrix is not None and info.output_shape else None,
        **_times(d),
    )


def _times(d: Decision) -> dict:
    """The report's timing fields of a conv with measured latencies (ms)."""
    if not d.latency:
        return {}
    after = d.latency["after"].get(d.rank) if d.rank is not None else None
    return {"time_before_ms": round(d.latency["before"].ms, 5),
            "time_after_ms": round(after.ms, 5) if after is not None else round(d.latency["before"].ms, 5),
            "measured_ranks": {int(r): round(t.ms, 5) for r, t in sorted(d.latency["after"].items())}}


def _energy_kept(svals: list[np.ndarray], rank: int) -> float:
    kept = [float((s[:rank] ** 2).sum() / (s**2).sum()) if (s**2).sum() > 0 else 1.0 for s in svals]
    return min(kept) if kept else 1.0
