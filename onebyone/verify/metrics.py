"""Numerical agreement between a reference output and a candidate output (plain numpy)."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class OutputMetrics:
    """Agreement of one model output over all samples.

    rel_l2 is over all samples together; worst_rel_l2 is the largest per-sample value. Relative errors divide by
    max(‖ref‖, atol·sqrt(size)) so that outputs that are ~0 everywhere do not blow up. top1/top5 are fractions
    of rows whose arg-max (top-5 set) agree, given only for outputs that look like class scores.
    """

    name: str
    shape: list[int]
    max_abs: float
    rel_l2: float
    worst_rel_l2: float
    cosine: float
    top1: float | None = None
    top5: float | None = None


def rel_l2(ref: np.ndarray, got: np.ndarray, atol: float = 1e-6) -> float:
    """‖ref - got‖ / max(‖ref‖, atol·sqrt(ref.size)) in float64."""
    r = ref.astype(np.float64).ravel()
    g = got.astype(np.float64).ravel()
    denom = max(float(np.linalg.norm(r)), atol * np.sqrt(max(r.size, 1)))
    return float(np.linalg.norm(r - g) / denom) if denom > 0 else 0.0


def worst_output_rel_l2(ref: dict[str, list[np.ndarray]], got: dict[str, list[np.ndarray]]) -> float:
    """The largest, over output names, of rel_l2 between all samples of `ref` and of `got` (per name, one array per
    sample) taken together."""
    return max(rel_l2(np.concatenate([a.ravel() for a in ref[k]]), np.concatenate([b.ravel() for b in got[k]])) for k in ref)


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


def compare_output(name: str, refs: list[np.ndarray], gots: list[np.ndarray], atol: float = 1e-6) -> OutputMetrics:
    """Metrics of one output over K samples (`refs[i]` and `gots[i]` are sample i's outputs)."""
    ref = np.concatenate([np.asarray(r).reshape(1, -1) for r in refs])
    got = np.concatenate([np.asarray(g).reshape(1, -1) for g in gots])
    if ref.shape != got.shape:
        raise ValueError(f"output {name!r}: shapes differ ({refs[0].shape} vs {gots[0].shape})")
    m = OutputMetrics(
        name=name,
        shape=list(np.asarray(refs[0]).shape),
        max_abs=float(np.max(np.abs(ref.astype(np.float64) - got))) if ref.size else 0.0,
        rel_l2=rel_l2(ref, got, atol),
        worst_rel_l2=max(rel_l2(r, g, atol) for r, g in zip(ref, got)),
        cosine=cosine(ref, got),
    )
    shape = tuple(np.asarray(refs[0]).shape)
    if looks_like_class_scores(shape):
        r = np.concatenate([np.asarray(x) for x in refs])
        g = np.concatenate([np.asarray(x) for x in gots])
        m.top1 = topk_agreement(r, g, 1)
        if shape[1] > 5:
            m.top5 = topk_agreement(r, g, 5)
    return m
