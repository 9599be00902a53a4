"""Fitting the factors of the chosen convs on calibration data, in graph order, and measuring the result.

Each conv is fitted against the original model's outputs using the inputs it sees in the model rewritten so far,
so errors introduced upstream are compensated downstream.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from onebyone.calibrated import moments as calibration
from onebyone.calibrated import patches as patches_mod
from onebyone.calibrated import whitening
from onebyone.calibrated.holdout import is_held_out
from onebyone.passes import factorize
from onebyone.passes.plan import Decision
from onebyone.verify.onnxruntime_run import Probe


MAX_POSITIONS_PER_SAMPLE = 4096  # patch statistics use at most this many output positions per sample
SHRINK = 0.5  # ridge of the refit, relative to trace/dim, scaled by dim/positions (strong when data are few)
MIN_RIDGE = 1e-6


def ridge_for(dim: int, count: int) -> float:
    """Relative ridge for `dim` unknowns estimated from `count` positions: negligible with plenty of data,
    strong (shrinking toward the whitened factorization) when the fit would interpolate the calibration set."""
    return max(MIN_RIDGE, SHRINK * dim / max(count, 1))


def fit(d: Decision, paired: calibration.Moments | None, fit_stats: list[PatchMoments],
        holdout: list[PatchMoments]) -> tuple[whitening.DataFactors, str]:
    """Data-aware factors of one conv and the name of the candidate that won.

    Candidates: weight-only SVD and the whitened factorization (B from the channel statistics), each as is and
    with W' and the bias refitted by least squares on the conv's input patches (padding, correlations between
    taps, the mean shift and upstream errors included). The candidate with the smallest output error on held-out
    calibration samples wins, so the result is never worse than weight-only SVD there and does not overfit a
    small calibration set.

    `paired` holds channel moments of (x from the original model, x̂ from the model rewritten so far); None when
    nothing upstream was rewritten (x̂ = x). `fit_stats`/`holdout` hold per-group patch moments of (x, x̂)."""
    info, m = d.info, d.moments
    s_xx = m.second_moment
    if paired is None:
        s_xh = s_hh = s_xx
        mean_x = mean_h = m.mean
    else:
        s_xh, s_hh, mean_x, mean_h = paired.paired()
    if d.lossless:  # exact on the span of the calibration inputs: no regularization, no refit
        exact = whitening.factorize_on_subspace(info.weight, info.groups, d.rank, s_hh)
        held_eq = group_equations(info.weight, _bias(d), exact.bottleneck, info.groups, holdout)
        err = output_error(held_eq, exact.weight, np.zeros(info.out_channels))
        return whitening.DataFactors(exact.bottleneck, exact.weight, exact.rel_error, None, err), "subspace"
    reg = max(whitening.DEFAULT_REG, ridge_for(info.in_channels // info.groups, m.count))
    whitened = whitening.factorize_data(info.weight, info.groups, d.rank, s_xh, s_hh, s_xx, mean_x, mean_h, reg)
    plain = factorize.factorize_svd(info.weight, info.groups, d.rank)
    bias = _bias(d)
    best = None
    for label, start in (("svd", plain), ("whitened", whitened)):
        delta0 = start.bias_delta
        delta0 = delta0.astype(np.float64) if delta0 is not None else np.zeros(info.out_channels)
        held_eq = group_equations(info.weight, bias, start.bottleneck, info.groups, holdout)
        fit_eq = held_eq if holdout is fit_stats else group_equations(info.weight, bias, start.bottleneck, info.groups, fit_stats)
        w_new, delta = refit(fit_eq, start, info.kernel)
        for name, w_opt, delta_opt in ((label, start.weight, delta0), (label + "+refit", w_new, delta)):
            err = output_error(held_eq, w_opt, delta_opt)
            if best is None or err < best[4]:
                best = (name, start.bottleneck, w_opt, delta_opt, err)
    name, b, w_new, delta, err = best
    w_new = w_new.astype(info.weight.dtype)
    rel = factorize.weight_rel_error(info.weight, b, w_new, info.groups)
    return whitening.DataFactors(b, w_new, rel, delta.astype(info.weight.dtype), err), name


def _bias(d: Decision) -> np.ndarray:
    node = d.info.node
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        t = ir.convenience.get_const_tensor(node.inputs[2])
        if t is not None:
            return t.numpy().astype(np.float64)
    return np.zeros(d.info.out_channels)


@dataclasses.dataclass
class PatchMoments:
    """Moments of one group's input patches p (original x) and p̂ (rewritten-so-far x̂): Σpp̂ᵀ, Σp̂p̂ᵀ, Σp, Σp̂,
    Σ‖W_g p‖² (the original outputs' energy, without bias) and the number of positions. Products are computed
    in float32 per sample and accumulated in float64."""

    xh: np.ndarray
    hh: np.ndarray
    x: np.ndarray
    h: np.ndarray
    y2: float = 0.0
    count: int = 0

    @classmethod
    def zeros(cls, dim: int) -> PatchMoments:
        return cls(np.zeros((dim, dim)), np.zeros((dim, dim)), np.zeros(dim), np.zeros(dim))

    def update(self, p: np.ndarray, p_hat: np.ndarray, w: np.ndarray) -> None:
        prod = p.T @ p_hat
        self.xh += prod
        self.hh += prod if p_hat is p else p_hat.T @ p_hat
        self.x += p.sum(0, dtype=np.float64)
        self.h += p_hat.sum(0, dtype=np.float64)
        self.y2 += float(np.sum(np.square(p @ w.T, dtype=np.float64)))
        self.count += p.shape[0]


def patch_moments(
    original: ir.Model, current: ir.Model | None, samples: list[dict], d: Decision, seed: int = 0
) -> tuple[list[PatchMoments], list[PatchMoments], calibration.Moments | None]:
    """Per-group patch moments of the conv's input in `original` (x) and `current` (x̂; None: x̂ = x) on the fit
    samples and on the held-out samples (see calibrated.holdout), and the paired channel moments of the fit
    samples (None when x̂ = x)."""
    info = d.info
    name = info.node.inputs[0].name
    pads = patches_mod.explicit_pads(info.input_shape[2:], info.kernel, info.strides, info.dilations, info.pads, info.auto_pad)
    ref = Probe(original, [name], "original (fitting)", only=True)
    cur = Probe(current, [name], "rewritten (fitting)", only=True) if current is not None else None
    cpg = info.in_channels // info.groups
    dim = cpg * info.kernel_size
    per_group = info.out_channels // info.groups
    weights = [info.weight[g * per_group : (g + 1) * per_group].reshape(per_group, -1).astype(np.float32) for g in range(info.groups)]
    stats = [PatchMoments.zeros(dim) for _ in range(info.groups)]
    held = [PatchMoments.zeros(dim) for _ in range(info.groups)]
    channel = calibration.Moments.zeros(info.in_channels, paired=True) if cur is not None else None
    rng = np.random.default_rng(seed)
    for index, feed in enumerate(samples):
        is_held = is_held_out(index, len(samples))
        x = ref.run(feed)[name]
        x_hat = cur.run(feed)[name] if cur is not None else x
        if channel is not None and not is_held:
            channel.update(x, x_hat)
        keep = None
        for g in range(info.groups):
            sl = slice(g * cpg, (g + 1) * cpg)
            p = patches_mod.im2col(x, info.kernel, info.strides, info.dilations, pads, sl)
            p_hat = p if cur is None else patches_mod.im2col(x_hat, info.kernel, info.strides, info.dilations, pads, sl)
            if keep is None and p.shape[0] > MAX_POSITIONS_PER_SAMPLE:
                keep = np.sort(rng.choice(p.shape[0], MAX_POSITIONS_PER_SAMPLE, replace=False))
            if keep is not None:
                p, p_hat = (p[keep], p_hat[keep]) if cur is not None else (p[keep],) * 2
            (held if is_held else stats)[g].update(p, p_hat, weights[g])
    if not any(h.count for h in held):  # too few samples to hold any out: judge on the fit samples
        held = stats
    return stats, held, channel


def _squeeze_rows(b: np.ndarray, a: np.ndarray, k: int) -> np.ndarray:
    """(B ⊗ I_K) applied to the rows of a [C*K, ...] -> [r*K, ...] without forming the Kronecker product."""
    c = b.shape[1]
    out = np.tensordot(b, a.reshape((c, k) + a.shape[1:]), axes=(1, 0))  # [r, K, ...]
    return out.reshape((b.shape[0] * k,) + a.shape[1:])


def normal_equations(st: PatchMoments, w: np.ndarray, b: np.ndarray, bg: np.ndarray, k: int):
    """For targets y = W p + b and features f = [(B⊗I_K) p̂; 1]: (E[ffᵀ], E[yfᵀ], E‖y‖²)."""
    cnt = max(st.count, 1)
    m_x, m_h = st.x / cnt, st.h / cnt
    t_hh = _squeeze_rows(bg, st.hh / cnt, k)  # [rK, CK]
    rk = t_hh.shape[0]
    ff = np.empty((rk + 1, rk + 1))
    ff[:-1, :-1] = _squeeze_rows(bg, t_hh.T, k).T
    tm_h = _squeeze_rows(bg, m_h, k)
    ff[:-1, -1] = ff[-1, :-1] = tm_h
    ff[-1, -1] = 1.0
    yf = np.empty((w.shape[0], rk + 1))
    yf[:, :-1] = _squeeze_rows(bg, (w @ (st.xh / cnt)).T, k).T + np.outer(b, tm_h)
    yf[:, -1] = w @ m_x + b
    yy = float(st.y2 / cnt + 2 * b @ (w @ m_x) + b @ b)
    return ff, yf, yy


def group_equations(weight, bias, bottleneck, groups: int, stats: list[PatchMoments]) -> list[tuple]:
    """normal_equations for every group: [(rows, W_g flat, b_g, ff, yf, yy)]."""
    n = weight.shape[0]
    k = int(np.prod(weight.shape[2:]))
    per_group = n // groups
    r = bottleneck.shape[0] // groups
    b3 = bottleneck.reshape(groups, r, -1).astype(np.float64)
    out = []
    for g, st in enumerate(stats):
        rows = slice(g * per_group, (g + 1) * per_group)
        w = weight[rows].reshape(per_group, -1).astype(np.float64)
        out.append((rows, w, bias[rows], *normal_equations(st, w, bias[rows], b3[g], k), st.count))
    return out


def refit(equations: list[tuple], start: factorize.Factors, kernel: tuple[int, ...]):
    """Given B = start.bottleneck (baked into `equations`), the W' and bias minimising
    E‖(W p + b) − (W' (B⊗I) p̂ + b')‖² per group, with a ridge that pulls W' toward start.weight (and the bias
    toward b + start.bias_delta) as data get scarce. Returns (W' [N, r, *kernel], bias delta b' − b [N])."""
    n = start.weight.shape[0]
    r = start.weight.shape[1]
    w_new = np.zeros((n, r) + tuple(kernel))
    delta = np.zeros(n)
    start_delta = start.bias_delta
    for rows, w, b, ff, yf, _, count in equations:
        dim = ff.shape[0]
        ridge = ridge_for(dim, count) * max(np.trace(ff[:-1, :-1]) / max(dim - 1, 1), 1e-30)
        theta0 = np.empty((w.shape[0], dim))
        theta0[:, :-1] = start.weight[rows].reshape(w.shape[0], -1)
        theta0[:, -1] = b + (start_delta[rows] if start_delta is not None else 0.0)
        theta = np.linalg.solve(ff + ridge * np.eye(dim), (yf + ridge * theta0).T).T
        w_new[rows] = theta[:, :-1].reshape((w.shape[0], r) + tuple(kernel))
        delta[rows] = theta[:, -1] - b
    return w_new, delta


def output_error(equations: list[tuple], new_weight: np.ndarray, delta: np.ndarray) -> float:
    """Relative output error ‖(W p + b) − (W' (B⊗I) p̂ + b + delta)‖ over the positions behind `equations`."""
    num = den = 0.0
    for rows, w, b, ff, yf, yy, _ in equations:
        theta = np.concatenate([new_weight[rows].reshape(w.shape[0], -1).astype(np.float64), (b + delta[rows])[:, None]], axis=1)
        num += max(yy - 2 * float(np.sum(yf * theta)) + float(np.sum((theta @ ff) * theta)), 0.0)
        den += yy
    return float(np.sqrt(num / den)) if den > 0 else 0.0


def measure(original: ir.Model, rewritten: ir.Model, samples: list[dict], names: list[str]) -> dict[str, float]:
    """Relative L2 error of each named value of `rewritten` against `original`, over all samples."""
    ref = Probe(original, names, "original (measuring)", only=True)
    got = Probe(rewritten, names, "rewritten (measuring)", only=True)
    num = dict.fromkeys(names, 0.0)
    den = dict.fromkeys(names, 0.0)
    for feed in samples:
        a_all, b_all = ref.run(feed), got.run(feed)
        for n in names:
            a, b = a_all[n], b_all[n]
            a64 = a.astype(np.float64)
            num[n] += float(((a64 - b) ** 2).sum())
            den[n] += float((a64**2).sum())
    return {n: float(np.sqrt(num[n] / den[n])) if den[n] > 0 else float(np.sqrt(num[n])) for n in names}
