"""Per-conv decisions: which spectrum ranks are read from, the rank each conv gets, and whether it pays."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from onebyone.passes import cost, factorize
from onebyone.passes.analysis import ConvInfo
from onebyone.report import LayerReport


@dataclasses.dataclass
class Decision:
    """What to do with one conv; `rank` is set exactly when the conv is to be rewritten."""

    info: ConvInfo
    layer: LayerReport
    rank: int | None = None
    moments: Any = None  # the factor source's statistics of this conv's input (calibration moments), if any
    data_svals: list[np.ndarray] | None = None
    data_energy: list[float] | None = None

    @property
    def svals(self) -> list[np.ndarray]:
        """The spectrum ranks are read from: whitened by data when there is calibration, else the weight's."""
        return self.data_svals if self.data_svals is not None else self.info.svals

    def numerical_rank(self) -> int:
        """Rank at the weight dtype's precision of the spectrum in use (weight, or weight whitened by data)."""
        return max(factorize.numerical_rank(s, self.info.matrix_shape, self.info.weight.dtype) for s in self.svals)

    def error_curve(self) -> np.ndarray:
        """Predicted relative output error for ranks 0..C/g (weight-energy based without calibration data)."""
        if self.data_svals is not None:
            return factorize.error_curve(self.data_svals, self.data_energy)
        return factorize.error_curve(self.info.svals, [float((s**2).sum()) for s in self.info.svals])

    def macs_at(self, rank: int) -> int:
        i = self.info
        return cost.bottleneck_macs(i.spatial_in, i.spatial_out, i.out_channels, i.in_channels, i.groups, i.kernel_size, rank)


def start(info: ConvInfo, spectrum: tuple[list[np.ndarray], list[float]] | None = None, moments: Any = None) -> Decision:
    """A Decision with the facts of `info`, skipped (with the analysis's reason) until a rank is given. `spectrum`
    (per-group singular values and energies, e.g. of the weight whitened by input statistics) replaces the weight's
    own spectrum for choosing ranks; `moments` are the statistics it came from."""
    d = Decision(info, _base_layer(info), moments=moments)
    if info.skip_reason is not None:
        d.layer.reason = info.skip_reason
        return d
    if spectrum is not None:
        d.data_svals, d.data_energy = spectrum
    d.layer.numerical_rank = d.numerical_rank()
    d.layer.error_curve = [round(float(e), 6) for e in d.error_curve()]
    if d.data_svals is not None:
        d.layer.data_singular_values = [s.tolist() for s in d.data_svals]
    return d


def candidate_ranks(d: Decision, round_to: int) -> np.ndarray:
    """Ranks below break-even that a budget may choose (multiples of round_to)."""
    top = cost.max_profitable_rank(d.info.break_even_rank)
    step = max(1, round_to)
    return np.arange(step, top + 1, step)


def accept(d: Decision, rank: int) -> None:
    """Rewrite this conv at `rank` (per group): the layer says whether it is lossless and what it costs."""
    d.rank = rank
    layer = d.layer
    layer.rank = rank
    layer.action = "rewritten"
    layer.lossless = rank >= layer.numerical_rank
    layer.lossless_on = ("calibration data" if d.data_svals is not None else "all inputs") if layer.lossless else None
    layer.energy_kept = _energy_kept(d.svals, rank)
    layer.predicted_error = float(d.error_curve()[min(rank, len(d.error_curve()) - 1)])
    be = d.info.break_even_rank
    on = " on calibration data" if d.data_svals is not None else ""
    if layer.lossless:
        layer.reason = f"lossless{on}: numerical rank {layer.numerical_rank} < break-even {be:.1f}"
    else:
        layer.reason = (f"approximate: rank {rank} of {d.info.matrix_shape[0]} keeps {layer.energy_kept:.4f} of the "
                        + ("output energy" if on else "weight energy"))
    layer.macs_after = d.macs_at(rank)
    i = d.info
    layer.params_after = int(i.groups * rank * (i.in_channels // i.groups) + i.out_channels * rank * i.kernel_size
                             + (i.out_channels if i.has_bias or d.moments is not None else 0))


def reject(d: Decision, reason: str) -> None:
    """Leave this conv alone, saying why."""
    d.rank = None
    d.layer.reason = reason


def _energy_kept(svals: list[np.ndarray], rank: int) -> float:
    kept = [float((s[:rank] ** 2).sum() / (s**2).sum()) if (s**2).sum() > 0 else 1.0 for s in svals]
    return min(kept) if kept else 1.0


def _base_layer(info: ConvInfo) -> LayerReport:
    return LayerReport(
        name=info.name,
        action="skipped",
        reason="",
        kernel=list(info.kernel),
        in_channels=info.in_channels,
        out_channels=info.out_channels,
        groups=info.groups,
        strides=list(info.strides),
        input_shape=list(info.input_shape) if info.input_shape else None,
        output_shape=list(info.output_shape) if info.output_shape else None,
        weight_source=info.weight_source,
        rank=None,
        numerical_rank=None,
        break_even_rank=round(info.break_even_rank, 3),
        lossless=False,
        macs_before=info.macs,
        macs_after=info.macs,
        params_before=info.params,
        params_after=info.params,
        singular_values=[s.tolist() for s in info.svals] if info.svals else None,
    )

