"""Numerical agreement between a reference output and a candidate output (plain numpy).

Each output is measured per part (see verify.parts: the slices of a Concat that joins quantities of different
scale; otherwise the whole output), every part on its own scale:
- relative L2 error ‖got − ref‖ / max(‖ref‖, floor·√size), over all samples and for the worst single sample. The floor
  (Tolerances.floor) is the noise level of the working dtype divided by the relative tolerance: a part whose reference is
  below it carries no signal that a relative error could measure (a detector's map on an input without text), and
  its error counts in units of that absolute floor instead;
- cosine similarity, only on parts whose reference is above the floor;
- the elementwise test of numerical libraries, |got − ref| ≤ atol + rtol·|ref| (numpy.allclose), when the
  tolerances set rtol; atol is derived per part from the dtype and the part's scale (max |ref|) unless given;
- top-1/top-5 agreement for outputs shaped like class scores;
- for integer and boolean outputs (label maps, masks, indices: decisions, not quantities) the fraction of elements
  equal to the reference's, `agreement`, which the tolerances check in place of relative error and cosine.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from onebyone.verify.parts import Split

# Absolute noise level per working dtype (what float rounding of values of order 1 leaves after a deep network),
# as torch.testing.assert_close and numpy use for float32; wider for half precision.
ABS_FLOOR = {"float64": 1e-9, "float32": 1e-5, "float16": 1e-3, "bfloat16": 1e-2}
# Relative error that half-precision arithmetic alone produces: tolerances are never tighter than this.
REL_FLOOR = {"float16": 4e-3, "bfloat16": 3e-2}


def abs_floor(dtype_name: str) -> float:
    """The absolute noise level of a working dtype (0 for integer and boolean outputs: they must match exactly)."""
    return ABS_FLOOR.get(dtype_name, 0.0 if dtype_name.startswith(("int", "uint", "bool")) else 1e-5)


@dataclasses.dataclass
class PartMetrics:
    """Agreement of one part of an output over all samples (see the module docstring)."""

    name: str
    max_abs: float
    rel_l2: float
    worst_rel_l2: float
    cosine: float | None  # None: the reference is below the floor, so direction carries no signal
    scale: float  # max |ref|
    above_floor: bool
    allclose: float | None = None  # max over elements of |got − ref| / (atol + rtol·|ref|); ≤ 1 passes
    atol: float | None = None


@dataclasses.dataclass
class OutputMetrics:
    """Agreement of one model output: the worst of its parts for each measure, and the parts themselves when the
    output has several. top1/top5 are fractions of rows whose arg-max (top-5 set) agree, for class-score outputs."""

    name: str
    shape: list[int]
    max_abs: float
    rel_l2: float
    worst_rel_l2: float
    cosine: float | None
    top1: float | None = None
    top5: float | None = None
    allclose: float | None = None
    worst_part: str | None = None  # the part with the largest worst_rel_l2, when the output has several
    parts: list[PartMetrics] | None = None
    agreement: float | None = None  # integer/boolean outputs: the fraction of elements equal to the reference's
    below_floor: list[str] = dataclasses.field(default_factory=list)  # parts whose reference is below the floor


def rel_l2_denominator(norm, size, atol: float = 1e-6):
    """What rel_l2 divides by for a reference of L2 norm `norm` and `size` values: max(norm, atol·sqrt(size))
    (elementwise for arrays), so that a reference near zero is not divided by its noise."""
    return np.maximum(norm, atol * np.sqrt(np.maximum(size, 1)))


def rel_l2(ref: np.ndarray, got: np.ndarray, atol: float = 1e-6) -> float:
    """‖ref - got‖ / max(‖ref‖, atol·sqrt(ref.size)) in float64."""
    r = ref.astype(np.float64).ravel()
    g = got.astype(np.float64).ravel()
    denom = float(rel_l2_denominator(float(np.linalg.norm(r)), r.size, atol))
    return float(np.linalg.norm(r - g) / denom) if denom > 0 else 0.0


def _parts(name: str, arrays: list[np.ndarray], split: Split | None) -> list[tuple[str, list[np.ndarray]]]:
    """(part name, per-sample slices) for one output."""
    if split is None or any(np.ndim(a) <= split.axis for a in arrays):
        return [(name, [np.asarray(a) for a in arrays])]
    per_sample = [split.slices(np.asarray(a)) for a in arrays]
    return [(name + label, [p[k][1] for p in per_sample]) for k, (label, _, _) in enumerate(split.bounds)]


def part_sums(ref: dict[str, list[np.ndarray]], got: dict[str, list[np.ndarray]],
              splits: dict[str, Split] | None = None) -> list[np.ndarray]:
    """Per output name and part, one row per sample: Σ(ref − got)², Σref² and the number of values (float64), from
    which the relative L2 error over any choice of the samples follows (resampled_errors)."""
    parts = []
    for k in ref:
        split = (splits or {}).get(k)
        for (_, rs), (_, gs) in zip(_parts(k, ref[k], split), _parts(k, got[k], split)):
            parts.append(sample_sums(rs, gs))
    return parts


def sample_sums(refs: list[np.ndarray], gots: list[np.ndarray]) -> np.ndarray:
    """[samples, 3]: per sample Σ(ref − got)², Σref² and the number of values, in float64."""
    out = np.zeros((len(refs), 3))
    for i, (r, g) in enumerate(zip(refs, gots)):
        r, g = np.asarray(r, np.float64).ravel(), np.asarray(g, np.float64).ravel()
        out[i] = float(np.square(r - g).sum()), float(np.square(r).sum()), r.size
    return out


def resampled_errors(parts: list[np.ndarray], draws: np.ndarray, atol: float = 1e-6) -> np.ndarray:
    """The largest over `parts` (part_sums) of the relative L2 error (rel_l2's) over the samples of each row of
    `draws` [D, n] (sample indices, repeats allowed): one error per row."""
    worst = np.zeros(len(draws))
    for sums in parts:
        total = sums[draws].sum(axis=1)
        worst = np.maximum(worst, np.sqrt(total[:, 0]) / rel_l2_denominator(np.sqrt(total[:, 1]), total[:, 2], atol))
    return worst


def whole_error(parts: list[np.ndarray]) -> float:
    """The largest over `parts` (part_sums) of the relative L2 error over all their samples (0 without parts)."""
    if not parts:
        return 0.0
    return float(resampled_errors(parts, np.arange(len(parts[0]))[None])[0])


def worst_part_rel_l2(ref: dict[str, list[np.ndarray]], got: dict[str, list[np.ndarray]],
                      splits: dict[str, Split] | None = None) -> float:
    """The largest, over output names and their parts, of rel_l2 between all samples of `ref` and of `got` (per name,
    one array per sample) taken together: the model-output error that budgets, searches and probes minimise."""
    return whole_error(part_sums(ref, got, splits))


def cosine(ref: np.ndarray, got: np.ndarray) -> float:
    """Cosine similarity in float64; 1.0 when both are zero, 0.0 when only one is."""
    r = ref.astype(np.float64).ravel()
    g = got.astype(np.float64).ravel()
    nr, ng = np.linalg.norm(r), np.linalg.norm(g)
    if nr == 0 and ng == 0:
        return 1.0
    if nr == 0 or ng == 0:
        return 0.0
    return float(np.dot(r, g) / (nr * ng))


def discrete(dtype: np.dtype) -> bool:
    """Whether values of `dtype` are decisions (integer or boolean: labels, masks, indices) rather than quantities."""
    return bool(np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.bool_))


def looks_like_class_scores(shape: tuple[int, ...]) -> bool:
    """A [batch, classes] output with at least two classes."""
    return len(shape) == 2 and shape[1] >= 2


def topk_agreement(ref: np.ndarray, got: np.ndarray, k: int) -> float:
    """Fraction of rows whose top-k class sets are equal (k=1: the arg-max agrees)."""
    ref2 = ref.reshape(-1, ref.shape[-1])
    got2 = got.reshape(-1, got.shape[-1])
    if k == 1:
        return float(np.mean(ref2.argmax(-1) == got2.argmax(-1)))
    a = np.sort(np.argsort(-ref2, axis=-1)[:, :k], axis=-1)
    b = np.sort(np.argsort(-got2, axis=-1)[:, :k], axis=-1)
    return float(np.mean(np.all(a == b, axis=-1)))


def measure_part(name: str, refs: list[np.ndarray], gots: list[np.ndarray], floor: float,
                 atol: float | None = None, rtol: float | None = None) -> PartMetrics:
    """Metrics of one part over K samples. `floor`: the absolute level below which the reference carries no signal
    (relative errors divide by at least floor·√size). With `rtol`, the elementwise test uses `atol` when given, else
    max(floor, rtol·max|ref|)."""
    ref = np.concatenate([np.asarray(r, np.float64).reshape(1, -1) for r in refs])
    got = np.concatenate([np.asarray(g, np.float64).reshape(1, -1) for g in gots])
    # NaN where the reference has NaN, and the same infinity, agree; they are left out of every measure
    agree = (np.isnan(ref) & np.isnan(got)) | (np.isinf(ref) & (ref == got))
    if agree.any():
        ref, got = np.where(agree, 0.0, ref), np.where(agree, 0.0, got)
    diff = np.abs(ref - got)
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    above = float(np.linalg.norm(ref)) > floor * np.sqrt(max(ref.size, 1))
    m = PartMetrics(
        name=name,
        max_abs=float(diff.max()) if ref.size else 0.0,
        rel_l2=rel_l2(ref, got, floor),
        worst_rel_l2=max((rel_l2(r, g, floor) for r, g in zip(ref, got)), default=0.0),
        cosine=cosine(ref, got) if above else None,
        scale=scale,
        above_floor=above,
    )
    if rtol is not None and ref.size:
        m.atol = atol if atol is not None else max(floor, rtol * scale)
        bound = m.atol + rtol * np.abs(ref)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(bound > 0, diff / np.where(bound > 0, bound, 1), np.where(diff > 0, np.inf, 0.0))
        m.allclose = float(np.nanmax(np.where(np.isnan(diff), np.inf, ratio)))
    return m


def compare_output(name: str, refs: list[np.ndarray], gots: list[np.ndarray], floor: float = 1e-6,
                   split: Split | None = None, atol: float | None = None, rtol: float | None = None) -> OutputMetrics:
    """Metrics of one output over K samples (`refs[i]` and `gots[i]` are sample i's outputs), part by part."""
    r0, g0 = np.asarray(refs[0]), np.asarray(gots[0])
    if r0.shape != g0.shape or len(refs) != len(gots):
        raise ValueError(f"output {name!r}: shapes differ ({r0.shape} vs {g0.shape})")
    parts = [measure_part(pname, rs, gs, floor, atol, rtol)
             for (pname, rs), (_, gs) in zip(_parts(name, refs, split), _parts(name, gots, split))]
    worst = max(parts, key=lambda p: p.worst_rel_l2)
    cosines = [p.cosine for p in parts if p.cosine is not None]
    closeness = [p.allclose for p in parts if p.allclose is not None]
    m = OutputMetrics(
        name=name,
        shape=list(r0.shape),
        max_abs=max(p.max_abs for p in parts),
        rel_l2=max(p.rel_l2 for p in parts),
        worst_rel_l2=worst.worst_rel_l2,
        cosine=min(cosines) if cosines else None,
        allclose=max(closeness) if closeness else None,
        worst_part=worst.name if len(parts) > 1 else None,
        parts=parts if len(parts) > 1 else None,
        below_floor=[p.name for p in parts if not p.above_floor],
    )
    if discrete(r0.dtype):
        m.agreement = float(np.mean([np.mean(np.asarray(r) == np.asarray(g)) for r, g in zip(refs, gots)]))
        m.cosine = None
    elif looks_like_class_scores(tuple(r0.shape)):
        r = np.concatenate([np.asarray(x) for x in refs])
        g = np.concatenate([np.asarray(x) for x in gots])
        m.top1 = topk_agreement(r, g, 1)
        if r0.shape[1] > 5:
            m.top5 = topk_agreement(r, g, 5)
    return m
