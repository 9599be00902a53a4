"""`energy`: the smallest rank keeping a fraction of the squared singular values (of the weight, or with calibration
data of the whitened weight: the expected output energy)."""

from __future__ import annotations

import dataclasses

import numpy as np

from onebyone.passes import factorize
from onebyone.passes.policies.base import register
from onebyone.passes.policies.per_conv import PerConv


@register
@dataclasses.dataclass(frozen=True)
class Energy(PerConv):
    """The smallest rank that keeps `energy` of the spectrum's energy in every group."""

    kind = "energy"
    energy: float | None = None

    def validate(self) -> None:
        if self.energy is None or not 0 < self.energy <= 1:
            raise ValueError(f"policy 'energy' needs energy in (0, 1], got {self.energy}")

    def label(self) -> str:
        return f"energy {self.energy}"

    def rank_for(self, d) -> int:
        if d.form == "tucker2":  # the smallest rank knob whose predicted (both sides') loss is within 1 - energy
            curve = d.error_curve()
            return int(np.argmax(curve**2 <= 1 - self.energy + 1e-12)) if np.any(curve**2 <= 1 - self.energy + 1e-12) \
                else len(curve) - 1
        return max(factorize.energy_rank(s, self.energy) for s in d.svals)
