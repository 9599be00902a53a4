"""Data-aware factorization (plain numpy): fit B and W' to minimise the expected output error of a conv under
the statistics of its input, as SVD-LLM does for linear layers and Kalle et al. (2025) for convs.

For one group with unfolded weight M (C x N·K), input x and approximated input x̂ (x̂ = x unless upstream convs
were already rewritten), the objective is E‖Mᵀx − Aᵀ B x̂‖² (each kernel tap treated as its own output, i.e.
correlations between neighbouring positions are ignored). With R = (E[x̂x̂ᵀ] + λI)^½ the optimum of rank r is the
truncated SVD of Q = Mᵀ E[x x̂ᵀ] R⁻¹ = U S Vᵀ: B = V_rᵀ R⁻¹, A = S_r U_rᵀ (reduced-rank regression). When x̂ = x,
Q = Mᵀ R, the whitened weight. The mean error left over is added to the bias.
"""

from __future__ import annotations


import numpy as np

from onebyone.passes import factorize

DEFAULT_REG = 1e-6  # λ = DEFAULT_REG · mean eigenvalue: keeps dead or constant channels from blowing up R⁻¹


def sqrt_and_inverse(s: np.ndarray, reg: float = DEFAULT_REG) -> tuple[np.ndarray, np.ndarray]:
    """(R, R⁻¹) with R the symmetric PSD square root of s + λI, λ = reg · trace(s)/C (a tiny floor when s = 0)."""
    c = s.shape[0]
    lam = reg * max(float(np.trace(s)) / c, 1e-30)
    vals, vecs = np.linalg.eigh((s + s.T) / 2 + lam * np.eye(c))
    vals = np.clip(vals, lam, None)
    root = np.sqrt(vals)
    return (vecs * root) @ vecs.T, (vecs / root) @ vecs.T


DataFactors = factorize.Factors  # data-aware factors: with bias_delta and predicted_error set


def _groups(weight: np.ndarray, groups: int, s: np.ndarray):
    """Per group: (M, slice of the group's channels)."""
    cpg = weight.shape[1]
    for g, m in enumerate(factorize.unfold(weight, groups)):
        yield m, slice(g * cpg, (g + 1) * cpg)


SUBSPACE_POSITIONS = 2  # a null space counts as the inputs' own only when this many positions per rank measured it
SHRINK = 0.5  # ridge for statistics from few positions, relative to trace/dim, scaled by dim/positions
MIN_RIDGE = 1e-6


def ridge_for(dim: int, count: int) -> float:
    """Relative ridge for `dim` unknowns estimated from `count` positions: negligible with plenty of data,
    strong (shrinking toward isotropy) when the statistics would interpolate the calibration set."""
    return max(MIN_RIDGE, SHRINK * dim / max(count, 1))


def pins_subspace(vals: np.ndarray, count: int | None) -> bool:
    """Whether statistics with eigenvalues `vals`, measured at `count` positions (None: unknown, trusted), show a
    subspace of the inputs: their numerical rank (float32 precision) is at most 1/SUBSPACE_POSITIONS of the
    positions. A second moment of n positions has rank at most n whatever the inputs, so with fewer positions than
    channels its null space says how few samples there were, not where the inputs lie (open_nsfw with 4 samples:
    256-channel 3x3 convs at 7x7 saw 196 positions, and a "lossless on calibration data" rewrite of them measured
    16-31% error on the held-out ones)."""
    if count is None or vals.size == 0:
        return True
    return SUBSPACE_POSITIONS * int(np.count_nonzero(above_noise(vals))) <= count


def above_noise(vals: np.ndarray) -> np.ndarray:
    """Which eigenvalues of a second moment lie above float32 noise (its numerical rank is their count)."""
    return vals > max(float(vals.max()), 0.0) * vals.size * np.finfo(np.float32).eps


def trusted_sqrt(s: np.ndarray, count: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(root, s') with root the symmetric PSD square root of s' (negative rounding-noise eigenvalues clipped to 0):
    s' = s, or, when s was measured at `count` positions too few to pin a subspace (pins_subspace), s + λI with
    λ = ridge_for(dim, count) · trace/dim, the fit's own ridge: then no direction reads as one the inputs never
    take."""
    vals, vecs = np.linalg.eigh((s + s.T) / 2)
    vals = np.clip(vals, 0, None)
    if pins_subspace(vals, count):
        return (vecs * np.sqrt(vals)) @ vecs.T, s
    lam = _shrinkage(vals, count)
    return (vecs * np.sqrt(vals + lam)) @ vecs.T, s + lam * np.eye(len(vals))


def _shrinkage(vals: np.ndarray, count: int) -> float:
    """λ for statistics with eigenvalues `vals` from `count` positions (see trusted_sqrt)."""
    return ridge_for(len(vals), count) * max(float(vals.sum()) / len(vals), 1e-30)


def spectrum(weight: np.ndarray, groups: int, s_xx: np.ndarray,
             count: int | None = None) -> tuple[list[np.ndarray], list[float]]:
    """Per group: singular values of the whitened weight Q = Mᵀ S^½ (unregularized, so inputs confined to a
    subspace give exactly zero singular values; S shrunk as trusted_sqrt says when its `count` positions are too few
    to pin a subspace), and the output energy E‖Mᵀx‖² = tr(MᵀSM) (of the shrunk S: the curve's relative errors
    are those of the shrunk statistics)."""
    svals, energy = [], []
    for m, sl in _groups(weight, groups, s_xx):
        root, s = trusted_sqrt(s_xx[sl, sl], count)
        svals.append(np.linalg.svd(m.T @ root, compute_uv=False))
        energy.append(quad(m, s))
    return svals, energy


def spatial_spectrum(weight: np.ndarray, groups: int, s_xx: np.ndarray,
                     count: int | None = None) -> tuple[list[np.ndarray], list[float]]:
    """The spatial form's spectrum: per group, singular values of (S^½ ⊗ I_k0) S_i (the [C/g·k0, N/g·K'] unfolding
    whitened by the channel statistics, the first axis's taps treated as uncorrelated, as the input form treats all
    taps; S shrunk as in `spectrum`), and the output energy under the same approximation."""
    cpg, k0 = weight.shape[1], weight.shape[2]
    svals, energy = [], []
    for g, m in enumerate(factorize.unfold_spatial(weight, groups)):
        sl = slice(g * cpg, (g + 1) * cpg)
        root, s = trusted_sqrt(s_xx[sl, sl], count)  # (S ⊗ I)^½ = S^½ ⊗ I
        svals.append(np.linalg.svd(np.kron(root, np.eye(k0)) @ m, compute_uv=False))
        energy.append(quad(m, np.kron(s, np.eye(k0))))
    return svals, energy


def output_spectrum(s_yy: np.ndarray, mean_y: np.ndarray, bias: np.ndarray, groups: int,
                    count: int | None = None) -> tuple[list[np.ndarray], list[float]]:
    """The output form's spectrum from the second moment and mean of the conv's output y (bias b included): per
    group, the square roots of the eigenvalues (descending) of y's covariance, whose tail beyond rank r is the
    error left by the best rank-r output subspace with the mean restored through the bias; and the output energy
    E‖y − b‖² (= E‖W p‖², as for the input form). The first value also carries ‖E[y] − b‖, the mean that every rank
    ≥ 1 keeps, so that factorize.error_curve reads the error of each rank off these values and energies."""
    n = s_yy.shape[0]
    per_group = n // groups
    svals, energy = [], []
    for g in range(groups):
        sl = slice(g * per_group, (g + 1) * per_group)
        mu, b = mean_y[sl], bias[sl]
        cov = s_yy[sl, sl] - np.outer(mu, mu)
        vals = np.sort(np.clip(np.linalg.eigvalsh((cov + cov.T) / 2), 0, None))[::-1]
        lam = 0.0 if pins_subspace(vals, count) else _shrinkage(vals, count)  # as trusted_sqrt
        vals = vals + lam
        vals[0] += float((mu - b) @ (mu - b))
        svals.append(np.sqrt(vals))
        energy.append(max(float(np.trace(s_yy[sl, sl]) - 2 * b @ mu + b @ b), 0.0) + lam * len(vals))
    return svals, energy


def whitened_svd(weight: np.ndarray, groups: int, s_xh: np.ndarray, s_hh: np.ndarray, reg: float = DEFAULT_REG) -> list:
    """Per group, (U, S, Vᵀ, R⁻¹) with U S Vᵀ the SVD of Q = Mᵀ E[x x̂ᵀ] R⁻¹ (see module doc): everything
    factorize_data needs that does not depend on the rank."""
    out = []
    for m, sl in _groups(weight, groups, s_hh):
        _, r_inv = sqrt_and_inverse(s_hh[sl, sl], reg)
        out.append((*np.linalg.svd(m.T @ s_xh[sl, sl] @ r_inv, full_matrices=False), r_inv))
    return out


def factorize_data(
    weight: np.ndarray, groups: int, rank: int, s_xh: np.ndarray, s_hh: np.ndarray, s_xx: np.ndarray,
    mean_x: np.ndarray, mean_h: np.ndarray, reg: float = DEFAULT_REG, svd: list | None = None, predict: bool = True,
) -> DataFactors:
    """The rank-`rank` B, W' (and bias correction) that minimise E‖Mᵀx − AᵀB x̂‖² per group (see module doc).
    `svd`: whitened_svd of the same statistics, when already computed (e.g. for several ranks of one conv);
    `predict` False leaves predicted_error unset (saves a product of the conv's size)."""
    n = weight.shape[0]
    k = int(np.prod(weight.shape[2:]))
    per_group = n // groups
    parts = []
    delta = np.zeros(n)
    err_num = err_den = 0.0
    svd = svd if svd is not None else whitened_svd(weight, groups, s_xh, s_hh, reg)
    for g, ((m, sl), (u, s, vt, r_inv)) in enumerate(zip(_groups(weight, groups, s_xx), svd)):
        kk = min(rank, len(s))
        bg = vt[:kk] @ r_inv  # [kk, C/g]
        a = s[:kk, None] * u[:, :kk].T  # [kk, N/g*K]
        parts.append((bg, a))
        # mean output error per (n, tap), summed over taps -> per output channel
        mean_err = m.T @ mean_x[sl] - a.T @ (bg @ mean_h[sl])
        delta[g * per_group : (g + 1) * per_group] = mean_err.reshape(per_group, k).sum(axis=1)
        if predict:
            p = a.T @ bg  # [N/g*K, C/g]: the rank-kk map from x̂ to the outputs
            energy = quad(m, s_xx[sl, sl])
            err_num += max(
                energy - 2 * float(np.sum((s_xh[sl, sl] @ p.T) * m)) + quad(p.T, s_hh[sl, sl]),
                0.0,
            )
            err_den += energy
    f = factorize.assemble(weight, groups, rank, parts)
    predicted = (float(np.sqrt(err_num / err_den)) if err_den > 0 else 0.0) if predict else None
    return DataFactors(
        bottleneck=f.bottleneck, weight=f.weight, rel_error=f.rel_error, bias_delta=delta.astype(weight.dtype),
        predicted_error=predicted,
    )


def objective(weight: np.ndarray, groups: int, bottleneck: np.ndarray, new_weight: np.ndarray, s_xx: np.ndarray) -> float:
    """The calibration objective E‖(W − W'∘B) x‖² summed over taps, for x with second moment s_xx (x̂ = x)."""
    diff = weight.astype(np.float64) - factorize.compose(bottleneck, new_weight, groups)
    return float(sum(quad(d, s_xx[sl, sl]) for d, sl in _groups(diff, groups, s_xx)))


def quad(m: np.ndarray, s: np.ndarray) -> float:
    """tr(mᵀ s m) for m [C, K] and s [C, C] (BLAS, not einsum)."""
    return float(np.sum((s @ m) * m))


def factorize_on_subspace(weight: np.ndarray, groups: int, rank: int, s_hh: np.ndarray) -> factorize.Factors:
    """Factors exact for every input in the span of the calibration inputs: the truncated SVD of Mᵀ P, with P
    the projector onto the range of E[x̂x̂ᵀ] (eigenvalues above float32 noise). Used when the whitened weight's
    numerical rank is at most `rank`, i.e. when the rewrite is lossless on the calibration data."""
    parts = []
    for m, sl in _groups(weight, groups, s_hh):
        vals, vecs = np.linalg.eigh((s_hh[sl, sl] + s_hh[sl, sl].T) / 2)
        keep = above_noise(vals)
        proj = vecs[:, keep] @ vecs[:, keep].T
        u, sv, vt = np.linalg.svd(m.T @ proj, full_matrices=False)
        kk = min(rank, len(sv))
        parts.append((vt[:kk], sv[:kk, None] * u[:, :kk].T))
    return factorize.assemble(weight, groups, rank, parts)
