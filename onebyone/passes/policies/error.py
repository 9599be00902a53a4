"""`error`: the largest MAC saving whose measured model-output error on calibration data stays under a target."""

from __future__ import annotations

import dataclasses

from onebyone.passes.policies.base import Policy, register


@register
@dataclasses.dataclass(frozen=True)
class Error(Policy):
    """A search over MAC budgets (onebyone.calibrated.search.smallest_budget, run by onebyone.optimize with
    calibration data): the pass itself cannot apply it."""

    kind = "error"
    searched = True
    max_error: float | None = None

    def validate(self) -> None:
        if self.max_error is None or self.max_error <= 0:
            raise ValueError(f"policy 'error' needs max_error > 0, got {self.max_error}")

    def label(self) -> str:
        return f"max error {self.max_error}"

    def assign(self, decisions, gains=None) -> None:
        raise ValueError("policy 'error' is a search over budgets: use onebyone.optimize with calibration data")
