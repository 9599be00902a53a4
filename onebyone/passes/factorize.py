"""Factorizations of a conv weight: plain numpy, no graph.

Input form (along the input channels): for a weight W[N, C/g, *kernel] with g groups, group i's unfolded matrix is
M_i = W[i*N/g:(i+1)*N/g].swapaxes(0, 1).reshape(C/g, -1). A rank-r factorization M_i = B_i^T A_i gives the
1x1 bottleneck B[g*r, C/g, 1..] (group i's rows i*r..(i+1)*r) and the new weight W'[N, r, *kernel].

Spatial form (2D and 3D kernels: the first spatial axis, then the others): group i's matrix is
S_i[(c, y), (n, x)] = W[n, c, y, x] ([C/g·k0, N/g·K'], x the taps of the other axes, K' their count); a rank-r
factorization S_i = F_i G_i gives a k0 x 1 (x 1) conv F[g*r, C/g, k0, 1, ..] (the first axis's strides, dilations and
pads, no bias) then a 1 x kw (1 x kh x kw in 3D) conv G[N, r, 1, ..] (the other axes', the bias). In 3D this is the
(1+2)D factorization of video networks: a temporal conv, then a spatial one.

Output form (along the output channels): group i's matrix is O_i = W[i*N/g:(i+1)*N/g].reshape(N/g, -1); a rank-r
factorization O_i = E_i R_i gives the reduced conv R[g*r, C/g, *kernel] (the conv's own attributes, no bias) and the
1x1 expansion E[N, r, 1..] (grouped like the conv, carrying the bias).

Tucker-2 form (both channel sides): per group W_i ≈ core_i ×_N U_i ×_C V_i with V_i [C/g, r1], U_i [N/g, r2] and
core_i [r2, r1, *kernel]: a 1x1 squeeze Vᵀ (C -> g·r1), the kernel on the core (g·r1 -> g·r2, the conv's attributes)
and a 1x1 expansion U (g·r2 -> N, the bias). One rank knob r sets both sides in proportion to their channels
(tucker2_ranks), so that every policy reads one rank per conv.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from onebyone.passes import svd_cache


def unfold(weight: np.ndarray, groups: int) -> list[np.ndarray]:
    """The per-group matrices M_i of shape (C/g, N/g * prod(kernel)), in float64."""
    n = weight.shape[0]
    per_group = n // groups
    w = weight.astype(np.float64)
    return [
        w[i * per_group : (i + 1) * per_group].swapaxes(0, 1).reshape(w.shape[1], -1) for i in range(groups)
    ]


def singular_values(weight: np.ndarray, groups: int) -> list[np.ndarray]:
    """Singular values (descending) of each group's unfolded matrix."""
    return [svd_cache.singular_values(m) for m in unfold(weight, groups)]


def numerical_rank(svals: np.ndarray, shape: tuple[int, int], dtype: np.dtype) -> int:
    """Rank at the precision of `dtype`: singular values above s_max * max(shape) * eps(dtype).

    This is numpy.linalg.matrix_rank's default rule, with the epsilon of the weight's storage type
    (float32 for most models) rather than float64, so rounding noise of a stored low-rank weight is not rank. For
    half-precision weights the rank is the smallest whose discarded tail is within the weight's own rounding.
    """
    if svals.size == 0 or svals[0] == 0:
        return 0
    eps = np.finfo(dtype).eps if np.issubdtype(dtype, np.floating) else np.finfo(np.float32).eps
    if eps > np.finfo(np.float32).eps:
        # Half precision: max(shape)·eps would call ~10% of the spectrum noise. Lossless there means the discarded
        # tail is no larger than the rounding of the weight itself: ‖tail‖_F ≤ eps·‖W‖_F.
        sq = np.asarray(svals, np.float64) ** 2
        tails = np.sqrt(np.maximum(sq.sum() - np.cumsum(sq), 0.0))  # tails[r-1] = ‖σ_{r+1..}‖
        return int(np.argmax(tails <= eps * np.sqrt(sq.sum())) + 1)
    tol = svals[0] * max(shape) * eps
    return int(np.count_nonzero(svals > tol))


def energy_rank(svals: np.ndarray, energy: float) -> int:
    """Smallest r whose leading singular values keep at least `energy` of the sum of squares."""
    sq = np.asarray(svals, dtype=np.float64) ** 2
    total = sq.sum()
    if total == 0:
        return 0
    kept = np.cumsum(sq) / total
    return int(min(len(sq), np.searchsorted(kept, energy - 1e-12) + 1))


def error_curve(svals: list[np.ndarray], energy: list[float]) -> np.ndarray:
    """Predicted relative output error for ranks 0..C/g (index = rank) from per-group singular values and the
    total energy of each group (the weight's, or the expected output's when whitened by input statistics)."""
    c = max(len(s) for s in svals)
    total = sum(energy)
    kept = np.zeros(c + 1)
    for s in svals:
        sq = np.zeros(c)
        sq[: len(s)] = s**2
        kept[1:] += np.cumsum(sq)
    return np.sqrt(np.clip(total - kept, 0, None) / total) if total > 0 else np.zeros(c + 1)


@dataclasses.dataclass(frozen=True)
class Factors:
    """The two convs that replace one, applied in order: `bottleneck` first, then `weight` (which carries the bias).

    Input form: B[g*r, C/g, 1, ...] then W'[N, r, *kernel]. Output form: R[g*r, C/g, *kernel] then E[N, r, 1, ...].
    Spatial form: F[g*r, C/g, k0, 1, ..] then G[N, r, 1, *other taps].
    `rel_error` = ‖W - composed‖_F / ‖W‖_F. Data-aware factors also carry `bias_delta` (added to the bias; None:
    unchanged) and `predicted_error` (the relative output error the fit predicts on the calibration statistics;
    None without data)."""

    bottleneck: np.ndarray
    weight: np.ndarray
    rel_error: float
    bias_delta: np.ndarray | None = None
    predicted_error: float | None = None
    form: str = "input"
    expand: np.ndarray | None = None  # Tucker-2 only: the third conv, the 1x1 expansion U [N, r2, 1..] (bias)

    @property
    def rank(self) -> int:
        """Channels per group between the first two convs."""
        return self.weight.shape[1]

    @property
    def ranks(self) -> tuple[int, ...]:
        """Channels per group between consecutive convs ((r1, r2) for Tucker-2)."""
        return (self.weight.shape[1], self.expand.shape[1]) if self.expand is not None else (self.rank,)

    def output_part(self, groups: int) -> "Factors":
        """Tucker-2: its last two convs as output-form Factors of the conv they replace after the squeeze, whose
        first factor is the composed kxk conv C -> g·r2 (squeeze then core) and whose second is the expansion."""
        reduced = compose(self.bottleneck, self.weight, groups).astype(self.weight.dtype)
        return Factors(reduced, self.expand, self.rel_error, self.bias_delta, self.predicted_error, form="output")


def compose(bottleneck: np.ndarray, weight: np.ndarray, groups: int) -> np.ndarray:
    """The single conv weight equal to applying `bottleneck` (1x1) then `weight` (inverse of factorize)."""
    n, r = weight.shape[:2]
    c_per_group = bottleneck.shape[1]
    per_group = n // groups
    b = bottleneck.reshape(groups, r, c_per_group).astype(np.float64)
    w = weight.astype(np.float64)
    out = np.empty((n, c_per_group) + weight.shape[2:], dtype=np.float64)
    for i in range(groups):
        wi = w[i * per_group : (i + 1) * per_group]  # [N/g, r, *k]
        out[i * per_group : (i + 1) * per_group] = np.moveaxis(np.tensordot(wi, b[i], axes=(1, 0)), -1, 1)
    return out


def weight_rel_error(weight: np.ndarray, bottleneck: np.ndarray, new_weight: np.ndarray, groups: int,
                     form: str = "input", expand: np.ndarray | None = None) -> float:
    """‖W − composed‖_F / ‖W‖_F (0 for an all-zero weight), for factors of `form` (Tucker-2: squeeze, core and
    `expand`)."""
    ref = weight.astype(np.float64)
    both = {"output": compose_output, "spatial": compose_spatial}.get(form, compose)(bottleneck, new_weight, groups)
    if expand is not None:
        both = compose_output(both, expand, groups)
    return float(np.linalg.norm(ref - both) / max(np.linalg.norm(ref), 1e-30))


def assemble(weight: np.ndarray, groups: int, rank: int, parts: list[tuple[np.ndarray, np.ndarray]]) -> Factors:
    """Factors from each group's (B_g [k, C/g], A_g [k, N/g·prod(kernel)]), k <= rank (missing rows stay zero):
    B[g*rank:(g+1)*rank] = B_g and W'[group g's outputs, :k] = A_g unfolded back. Both in the dtype of `weight`."""
    n = weight.shape[0]
    kernel = weight.shape[2:]
    per_group = n // groups
    c_per_group = weight.shape[1]
    b = np.zeros((groups * rank, c_per_group), dtype=np.float64)
    w_new = np.zeros((n, rank) + kernel, dtype=np.float64)
    for g, (bg, a) in enumerate(parts):
        k = bg.shape[0]
        b[g * rank : g * rank + k] = bg
        w_new[g * per_group : (g + 1) * per_group, :k] = a.reshape((k, per_group) + kernel).swapaxes(0, 1)
    bottleneck = b.reshape((groups * rank, c_per_group) + (1,) * len(kernel)).astype(weight.dtype)
    w_new = w_new.astype(weight.dtype)
    return Factors(bottleneck, w_new, weight_rel_error(weight, bottleneck, w_new, groups))


def truncated(m: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """The best rank-`rank` factorization m ≈ U A in the Frobenius norm (truncated SVD): U with orthonormal columns
    [rows, k], A = S_k V_kᵀ [k, cols], k = min(rank, min(m.shape))."""
    u, s, vt = svd_cache.svd(m)
    k = min(rank, len(s))
    return u[:, :k], s[:k, None] * vt[:k]


def factorize_svd(weight: np.ndarray, groups: int, rank: int) -> Factors:
    """Best rank-`rank` factorization of each group in the Frobenius norm (truncated SVD).

    B has orthonormal rows per group (activations keep their scale); W' carries the singular values.
    Both factors have the dtype of `weight`.
    """
    return assemble(weight, groups, rank, [(u.T, a) for u, a in (truncated(m, rank) for m in unfold(weight, groups))])


def unfold_output(weight: np.ndarray, groups: int) -> list[np.ndarray]:
    """The per-group matrices O_i of shape (N/g, C/g * prod(kernel)), in float64 (output-form unfolding)."""
    per_group = weight.shape[0] // groups
    w = weight.astype(np.float64).reshape(weight.shape[0], -1)
    return [w[i * per_group : (i + 1) * per_group] for i in range(groups)]


def singular_values_output(weight: np.ndarray, groups: int) -> list[np.ndarray]:
    """Singular values (descending) of each group's output-form matrix."""
    return [svd_cache.singular_values(m) for m in unfold_output(weight, groups)]


def compose_output(reduced: np.ndarray, expand: np.ndarray, groups: int) -> np.ndarray:
    """The single conv weight equal to applying `reduced` (the kxk conv to g*r channels) then `expand` (1x1)."""
    n, r = expand.shape[:2]
    per_group = n // groups
    e = expand.reshape(n, r).astype(np.float64)
    red = reduced.reshape(groups, r, -1).astype(np.float64)
    out = np.concatenate([e[i * per_group : (i + 1) * per_group] @ red[i] for i in range(groups)])
    return out.reshape((n,) + reduced.shape[1:])


def assemble_output(weight: np.ndarray, groups: int, rank: int, parts: list[tuple[np.ndarray, np.ndarray]],
                    bias_delta: np.ndarray | None = None, predicted_error: float | None = None) -> Factors:
    """Output-form Factors from each group's (E_g [N/g, k], R_g [k, C/g·prod(kernel)]), k <= rank (missing channels
    stay zero). Both in the dtype of `weight`."""
    n, cpg, kernel = weight.shape[0], weight.shape[1], weight.shape[2:]
    per_group = n // groups
    reduced = np.zeros((groups * rank, cpg * int(np.prod(kernel))))
    expand = np.zeros((n, rank))
    for g, (e, red) in enumerate(parts):
        k = e.shape[1]
        reduced[g * rank : g * rank + k] = red
        expand[g * per_group : (g + 1) * per_group, :k] = e
    reduced = reduced.reshape((groups * rank, cpg) + kernel).astype(weight.dtype)
    expand = expand.reshape((n, rank) + (1,) * len(kernel)).astype(weight.dtype)
    rel = weight_rel_error(weight, reduced, expand, groups, "output")
    return Factors(reduced, expand, rel, bias_delta, predicted_error, form="output")


def factorize_output_svd(weight: np.ndarray, groups: int, rank: int) -> Factors:
    """Best rank-`rank` output-form factorization of each group in the Frobenius norm (truncated SVD): E has
    orthonormal columns per group, R = Eᵀ W carries the singular values."""
    return assemble_output(weight, groups, rank, [truncated(m, rank) for m in unfold_output(weight, groups)])


def unfold_spatial(weight: np.ndarray, groups: int) -> list[np.ndarray]:
    """The per-group matrices S_i of shape (C/g * k0, N/g * K'), in float64 (spatial-form unfolding: the first
    spatial axis against the others, 2D and 3D kernels)."""
    n, cpg, k0 = weight.shape[:3]
    per_group = n // groups
    rest = int(np.prod(weight.shape[3:]))
    w = weight.astype(np.float64).reshape(n, cpg, k0, rest)
    return [w[i * per_group:(i + 1) * per_group].transpose(1, 2, 0, 3).reshape(cpg * k0, per_group * rest)
            for i in range(groups)]


def singular_values_spatial(weight: np.ndarray, groups: int) -> list[np.ndarray]:
    """Singular values (descending) of each group's spatial-form matrix."""
    return [svd_cache.singular_values(m) for m in unfold_spatial(weight, groups)]


def compose_spatial(first: np.ndarray, second: np.ndarray, groups: int) -> np.ndarray:
    """The single conv weight equal to applying `first` (k0 x 1 (x 1), to g*r channels) then `second` (1 x ..)."""
    n, r = second.shape[:2]
    per_group = n // groups
    f = first.reshape(groups, r, first.shape[1], first.shape[2]).astype(np.float64)  # [g, r, C/g, k0]
    g2 = second.reshape(n, r, -1).astype(np.float64)  # [N, r, K']
    out = np.concatenate([np.einsum("ntx,tcy->ncyx", g2[i * per_group:(i + 1) * per_group], f[i])
                          for i in range(groups)])
    return out.reshape((n, first.shape[1], first.shape[2]) + second.shape[3:])


def assemble_spatial(weight: np.ndarray, groups: int, rank: int, parts: list[tuple[np.ndarray, np.ndarray]],
                     bias_delta: np.ndarray | None = None, predicted_error: float | None = None) -> Factors:
    """Spatial-form Factors from each group's (F_g [C/g·k0, k], G_g [k, N/g·K']), k <= rank (missing channels stay
    zero). Both in the dtype of `weight`."""
    n, cpg, k0 = weight.shape[:3]
    rest = weight.shape[3:]
    per_group, size = n // groups, int(np.prod(rest))
    ones = (1,) * len(rest)
    first = np.zeros((groups * rank, cpg, k0))
    second = np.zeros((n, rank, size))
    for g, (f, gg) in enumerate(parts):
        k = f.shape[1]
        first[g * rank:g * rank + k] = f.T.reshape(k, cpg, k0)
        second[g * per_group:(g + 1) * per_group, :k] = gg.reshape(k, per_group, size).transpose(1, 0, 2)
    first = first.reshape(first.shape + ones).astype(weight.dtype)
    second = second.reshape((n, rank, 1) + rest).astype(weight.dtype)
    rel = weight_rel_error(weight, first, second, groups, "spatial")
    return Factors(first, second, rel, bias_delta, predicted_error, form="spatial")


def factorize_spatial_svd(weight: np.ndarray, groups: int, rank: int) -> Factors:
    """Best rank-`rank` spatial-form factorization of each group in the Frobenius norm (truncated SVD): F has
    orthonormal columns per group, G carries the singular values."""
    return assemble_spatial(weight, groups, rank, [truncated(m, rank) for m in unfold_spatial(weight, groups)])


def tucker2_ranks(in_per_group: int, out_per_group: int, rank: int) -> tuple[int, int]:
    """The per-group Tucker-2 ranks (r1 on the input side, r2 on the output side) of rank knob `rank` (1 to the
    larger side): both sides reduced in proportion to their channels (r1 = r2 = rank when C = N)."""
    top = max(in_per_group, out_per_group)
    rank = min(max(rank, 1), top)
    return max(1, min(in_per_group, -(-rank * in_per_group // top))), max(1, min(out_per_group, -(-rank * out_per_group // top)))


def _leading(m: np.ndarray, k: int) -> np.ndarray:
    """The `k` leading left singular vectors of m (from the eigenvectors of m mᵀ: m is wide here)."""
    vals, vecs = np.linalg.eigh(m @ m.T)
    return vecs[:, np.argsort(vals)[::-1][:k]]


def hooi(w: np.ndarray, r1: int, r2: int, iterations: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tucker-2 of one group's weight w [N/g, C/g, *kernel] by higher-order orthogonal iteration started from the
    truncated HOSVD: (V [C/g, r1], core [r2, r1, *kernel], U [N/g, r2]), V and U with orthonormal columns; exact when
    w has multilinear ranks at most (r1, r2)."""
    n, c = w.shape[:2]
    w3 = w.reshape(n, c, -1).astype(np.float64)
    r1, r2 = min(r1, c), min(r2, n)
    v = _leading(w3.swapaxes(0, 1).reshape(c, -1), r1)
    u = _leading(w3.reshape(n, -1), r2)
    for _ in range(iterations if r1 < c or r2 < n else 0):
        u = _leading(np.tensordot(w3, v, axes=(1, 0)).reshape(n, -1), r2)  # [N/g, K·r1]
        v = _leading(np.tensordot(u, w3, axes=(0, 0)).swapaxes(0, 1).reshape(c, -1), r1)  # [C/g, r2·K]
    core = np.tensordot(np.tensordot(u, w3, axes=(0, 0)), v, axes=(1, 0)).swapaxes(1, 2)  # [r2, r1, K]
    return v, core.reshape((r2, r1) + w.shape[2:]), u


def assemble_tucker2(weight: np.ndarray, groups: int, ranks: tuple[int, int], parts: list[tuple], bias_delta=None,
                     predicted_error: float | None = None) -> Factors:
    """Tucker-2 Factors from each group's (V_g [C/g, k1], core_g [k2, k1, *kernel], U_g [N/g, k2]), k1 <= r1 and
    k2 <= r2 (missing channels stay zero): squeeze [g·r1, C/g, 1..], core [g·r2, r1, *kernel], expand [N, r2, 1..], in
    the dtype of `weight`."""
    r1, r2 = ranks
    n, cpg, kernel = weight.shape[0], weight.shape[1], weight.shape[2:]
    per_group, ones = n // groups, (1,) * len(kernel)
    squeeze = np.zeros((groups * r1, cpg) + ones)
    core = np.zeros((groups * r2, r1) + kernel)
    expand = np.zeros((n, r2) + ones)
    for g, (v, c, u) in enumerate(parts):
        k1, k2 = v.shape[1], u.shape[1]
        squeeze[g * r1:g * r1 + k1] = v.T.reshape((k1, cpg) + ones)
        core[g * r2:g * r2 + k2, :k1] = c
        expand[g * per_group:(g + 1) * per_group, :k2] = u.reshape((per_group, k2) + ones)
    squeeze, core, expand = (a.astype(weight.dtype) for a in (squeeze, core, expand))
    rel = weight_rel_error(weight, squeeze, core, groups, expand=expand)
    return Factors(squeeze, core, rel, bias_delta, predicted_error, form="tucker2", expand=expand)


def factorize_tucker2(weight: np.ndarray, groups: int, rank: int) -> Factors:
    """Weight-only Tucker-2 factors of each group at rank knob `rank` (tucker2_ranks), by HOOI (hooi)."""
    per_group = weight.shape[0] // groups
    r1, r2 = tucker2_ranks(weight.shape[1], per_group, rank)
    parts = [hooi(weight[g * per_group:(g + 1) * per_group], r1, r2) for g in range(groups)]
    return assemble_tucker2(weight, groups, (r1, r2), parts)


SPLIT = {"input": factorize_svd, "output": factorize_output_svd, "spatial": factorize_spatial_svd,
         "pointwise": factorize_svd, "tucker2": factorize_tucker2}  # each form's weight-only factorization


def svd_factors(weight: np.ndarray, groups: int, rank: int, form: str) -> Factors:
    """Weight-only factors of `form` at `rank`: the truncated SVD of the form's unfolding."""
    return SPLIT[form](weight, groups, rank)
