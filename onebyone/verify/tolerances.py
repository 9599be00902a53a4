"""Explicit tolerances that a verification must meet, and the command-line options that loosen each of them."""

from __future__ import annotations

import dataclasses

from onebyone.verify.metrics import REL_FLOOR, OutputMetrics, abs_floor

# The option of `onebyone optimize/verify` that sets each field (named in FAIL lines)
OPTION = {"max_rel_l2": "--max-rel-error", "min_cosine": "--min-cosine", "min_top1": "--min-top1",
          "max_abs": "--max-abs", "rtol": "--rtol", "atol": "--atol"}


@dataclasses.dataclass(frozen=True)
class Tolerances:
    """Limits checked on every part of every output (see verify.metrics): worst per-sample relative L2 error,
    cosine similarity (parts above the noise floor), top-1 agreement (class-score outputs), optionally max-abs error,
    and with `rtol` the elementwise test |got − ref| ≤ atol + rtol·|ref|.

    `atol` is the absolute noise level: None derives it from the working dtype (float32: 1e-5; float16: 1e-3) and,
    in the elementwise test, from each part's scale (at least rtol·max|ref|)."""

    max_rel_l2: float
    min_cosine: float
    min_top1: float
    max_abs: float | None = None
    atol: float | None = None
    rtol: float | None = None

    def at_precision(self, dtype_name: str) -> Tolerances:
        """These tolerances, loosened to what arithmetic in `dtype_name` (the model's narrowest float) can meet."""
        rel = REL_FLOOR.get(dtype_name, 0.0)
        if not rel:
            return self
        return dataclasses.replace(
            self, max_rel_l2=max(self.max_rel_l2, rel), min_cosine=min(self.min_cosine, 1 - rel**2),
            rtol=None if self.rtol is None else max(self.rtol, rel))

    def floor(self, dtype_name: str) -> float:
        """The absolute level below which a part's reference carries no signal for a relative error of
        max_rel_l2: the dtype's noise (or `atol`) divided by max_rel_l2."""
        noise = self.atol if self.atol is not None else abs_floor(dtype_name)
        return noise / max(self.max_rel_l2, 1e-12) if noise else 0.0

    def failures(self, m: OutputMetrics) -> list[str]:
        """One line per missed limit, naming the part and the option that loosens it (empty when all are met)."""
        if m.agreement is not None:  # decisions (labels, masks, indices): the share that agree, as top-1 is
            return self._discrete_failures(m)
        out = []
        where = m.worst_part or m.name
        if not m.worst_rel_l2 <= self.max_rel_l2:
            out.append(f"{where}: relative error {m.worst_rel_l2:.3g} > {self.max_rel_l2:.3g} ({OPTION['max_rel_l2']})")
        for p in m.parts or []:
            if p.name != where and not p.worst_rel_l2 <= self.max_rel_l2:
                out.append(f"{p.name}: relative error {p.worst_rel_l2:.3g} > {self.max_rel_l2:.3g} ({OPTION['max_rel_l2']})")
        if m.cosine is not None and not m.cosine >= self.min_cosine:
            out.append(f"{m.name}: cosine {m.cosine:.6f} < {self.min_cosine} ({OPTION['min_cosine']})")
        if m.top1 is not None and not m.top1 >= self.min_top1:
            out.append(f"{m.name}: top-1 agreement {m.top1:.3f} < {self.min_top1} ({OPTION['min_top1']})")
        if self.max_abs is not None and not m.max_abs <= self.max_abs:
            out.append(f"{m.name}: max-abs error {m.max_abs:.3g} > {self.max_abs:.3g} ({OPTION['max_abs']})")
        if self.rtol is not None and m.allclose is not None and not m.allclose <= 1.0:
            out.append(f"{m.name}: elementwise |got − ref| exceeds atol + rtol·|ref| ({self.rtol:g}) by {m.allclose:.3g}x "
                       f"({OPTION['rtol']}, {OPTION['atol']})")
        return out

    def _discrete_failures(self, m: OutputMetrics) -> list[str]:
        """An integer or boolean output: at least min_top1 of its elements equal the reference's (all of them under
        LOSSLESS), and max-abs when set; relative error and cosine measure quantities, not decisions."""
        out = []
        if not m.agreement >= self.min_top1:
            out.append(f"{m.name}: {m.agreement:.4f} of its elements agree < {self.min_top1} ({OPTION['min_top1']})")
        if self.max_abs is not None and not m.max_abs <= self.max_abs:
            out.append(f"{m.name}: max-abs error {m.max_abs:.3g} > {self.max_abs:.3g} ({OPTION['max_abs']})")
        return out

    def describe(self) -> str:
        """A one-line summary, e.g. 'rel ≤ 0.05, cos ≥ 0.995, top-1 ≥ 0.95'."""
        text = f"rel ≤ {self.max_rel_l2:g}, cos ≥ {self.min_cosine:g}, top-1 ≥ {self.min_top1:g}"
        if self.rtol is not None:
            text += f", |Δ| ≤ atol + {self.rtol:g}·|ref|"
        if self.max_abs is not None:
            text += f", max-abs ≤ {self.max_abs:g}"
        return text + (f", atol {self.atol:g}" if self.atol is not None else "")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Tolerances:
        """The inverse of to_dict; unknown keys are ignored, missing optional ones take their defaults."""
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in fields})


# A lossless rewrite only reassociates float32 sums: errors stay at float32 rounding level through a deep net.
LOSSLESS = Tolerances(max_rel_l2=1e-4, min_cosine=0.99999, min_top1=1.0, rtol=1e-4)
# An approximate rewrite must keep outputs close and decisions unchanged; users tighten or loosen these.
APPROXIMATE = Tolerances(max_rel_l2=0.05, min_cosine=0.995, min_top1=0.95)


def with_overrides(base: Tolerances, **overrides) -> Tolerances:
    """`base` with the given non-None fields replaced."""
    return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})


def narrowest_float(dtype_names) -> str:
    """The float dtype with the largest epsilon among `dtype_names` ('float32' when there is none)."""
    floats = [d for d in dtype_names if d in ABS_FLOOR_ORDER]
    return max(floats, key=ABS_FLOOR_ORDER.index) if floats else "float32"


ABS_FLOOR_ORDER = ["float64", "float32", "float16", "bfloat16"]

