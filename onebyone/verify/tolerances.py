"""Explicit tolerances that a verification must meet."""

from __future__ import annotations

import dataclasses

from onebyone.verify.metrics import OutputMetrics


@dataclasses.dataclass(frozen=True)
class Tolerances:
    """Limits checked on every output: worst per-sample relative L2 error, cosine similarity, top-1 agreement
    (class-score outputs only), and optionally max-abs error. `atol` is the absolute floor of relative errors."""

    max_rel_l2: float
    min_cosine: float
    min_top1: float
    max_abs: float | None = None
    atol: float = 1e-6

    def failures(self, m: OutputMetrics) -> list[str]:
        """Human-readable reasons why `m` misses these tolerances (empty when it meets them)."""
        out = []
        if not m.worst_rel_l2 <= self.max_rel_l2:
            out.append(f"{m.name}: relative error {m.worst_rel_l2:.3g} > {self.max_rel_l2:.3g}")
        if not m.cosine >= self.min_cosine:
            out.append(f"{m.name}: cosine {m.cosine:.6f} < {self.min_cosine}")
        if m.top1 is not None and not m.top1 >= self.min_top1:
            out.append(f"{m.name}: top-1 agreement {m.top1:.3f} < {self.min_top1}")
        if self.max_abs is not None and not m.max_abs <= self.max_abs:
            out.append(f"{m.name}: max-abs error {m.max_abs:.3g} > {self.max_abs:.3g}")
        return out


# A lossless rewrite only reassociates float32 sums: errors stay at float32 rounding level through a deep net.
LOSSLESS = Tolerances(max_rel_l2=1e-4, min_cosine=0.99999, min_top1=1.0)
# An approximate rewrite must keep outputs close and decisions unchanged; users tighten or loosen these.
APPROXIMATE = Tolerances(max_rel_l2=0.05, min_cosine=0.995, min_top1=0.95)


def with_overrides(base: Tolerances, **overrides) -> Tolerances:
    """`base` with the given non-None fields replaced."""
    return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})
