"""Fitting the factors of the chosen convs on calibration data, in graph order, and measuring the result.

Each conv is fitted against the original model's outputs using the inputs it sees in the model rewritten so far,
so errors introduced upstream are compensated downstream. The data come from calibrated.stream: the conv's input in
the original model (x) and in the model rewritten so far (x̂), and its original output y, one array per sample.
Every candidate is scored from moments of those arrays; no model is run here.
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
from onebyone.passes.graph_edits import constant_tensor
from onebyone.passes.plan import Decision
from onebyone.verify.onnxruntime_run import Probe

POSITIONS_PER_CONV = 4096 * 32  # output positions the patch statistics of one conv use, spread over the samples
POSITIONS_PER_UNKNOWN = 64  # ... at most this many per feature of the fit (products cost positions x features²)
MIN_POSITIONS_PER_SAMPLE = 256  # ... but at least this many per sample (all of them when a sample has fewer)


def positions_for(unknowns: int) -> int:
    """Output positions the patch statistics of a fit with `unknowns` features use at most."""
    return min(POSITIONS_PER_CONV, POSITIONS_PER_UNKNOWN * unknowns)


@dataclasses.dataclass
class ConvData:
    """One conv's calibration data, one array per sample: its input x in the original model, x̂ in the model
    rewritten so far (None: x̂ = x) and its original output y (bias included). Any sequence of arrays works
    (lists, or calibrated.stream columns that read spilled arrays back from disk)."""

    x: object
    x_hat: object | None
    y: object
    _keeps: list = dataclasses.field(default_factory=list, repr=False)
    _rng: np.random.Generator = dataclasses.field(default_factory=lambda: np.random.default_rng(0), repr=False)

    def positions(self, i: int, available: int, unknowns: int) -> np.ndarray | None:
        """The output positions of sample `i` (of `available`) that the patch statistics of a fit with `unknowns`
        features use: None for all of them, or a sorted random subset when the conv's budget (positions_for) would
        be exceeded. Drawn once per sample, in sample order (ask for 0, 1, ... first), and the same at every later
        call."""
        if i < len(self._keeps):
            return self._keeps[i]
        per_sample = max(MIN_POSITIONS_PER_SAMPLE, positions_for(unknowns) // max(len(self.y), 1))
        keep = None if available <= per_sample else np.sort(self._rng.choice(available, per_sample, replace=False))
        self._keeps.append(keep)
        return keep

    def paired_moments(self) -> calibration.Moments | None:
        """Channel moments of (x, x̂) over the fit samples (not the held-out ones); None when x̂ = x."""
        if self.x_hat is None:
            return None
        count = len(self.x)
        m = None
        for i in range(count):
            if is_held_out(i, count):
                continue
            x, x_hat = self.x[i], self.x_hat[i]
            if m is None:
                m = calibration.Moments.zeros(x.shape[1], paired=True)
            m.update(x, x_hat)
        return m


def fit(d: Decision, data: ConvData) -> tuple[whitening.DataFactors, str]:
    """Data-aware factors of one conv and the name of the candidate that won.

    Candidates: weight-only SVD and the whitened factorization (B from the channel statistics), each as is and
    with W' and the bias refitted by least squares on the conv's input patches (padding, correlations between
    taps, the mean shift and upstream errors included). The candidate with the smallest output error on held-out
    calibration samples wins, so the result is never worse than weight-only SVD there and does not overfit a
    small calibration set."""
    info, m = d.info, d.moments
    paired = data.paired_moments()
    if paired is None:
        s_xh = s_hh = s_xx = m.second_moment
        mean_x = mean_h = m.mean
    else:
        s_xx = m.second_moment
        s_xh, s_hh, mean_x, mean_h = paired.paired()
    bias = bias_of(info)
    if d.lossless:  # exact on the span of the calibration inputs: no regularization, no refit
        exact = whitening.factorize_on_subspace(info.weight, info.groups, d.rank, s_hh)
        _, held_eq = feature_equations(d, exact.bottleneck, data, bias)
        err = output_error(held_eq, exact.weight, np.zeros(info.out_channels))
        return whitening.DataFactors(exact.bottleneck, exact.weight, exact.rel_error, None, err), "subspace"
    reg = max(whitening.DEFAULT_REG, whitening.ridge_for(info.in_channels // info.groups, m.count))
    whitened = whitening.factorize_data(info.weight, info.groups, d.rank, s_xh, s_hh, s_xx, mean_x, mean_h, reg)
    plain = factorize.factorize_svd(info.weight, info.groups, d.rank)
    best = None
    for label, start in (("svd", plain), ("whitened", whitened)):
        delta0 = start.bias_delta
        delta0 = delta0.astype(np.float64) if delta0 is not None else np.zeros(info.out_channels)
        fit_eq, held_eq = feature_equations(d, start.bottleneck, data, bias)
        w_new, delta = refit(fit_eq, start, info.kernel)
        for name, w_opt, delta_opt in ((label, start.weight, delta0), (label + "+refit", w_new, delta)):
            if info.matrix is not None and not info.matrix.has_bias_slot:  # a MatMul with no Add after it
                delta_opt = np.zeros_like(delta_opt)
            err = output_error(held_eq, w_opt, delta_opt)
            if best is None or err < best[4]:
                best = (name, start.bottleneck, w_opt, delta_opt, err)
    name, b, w_new, delta, err = best
    w_new = w_new.astype(info.weight.dtype)
    rel = factorize.weight_rel_error(info.weight, b, w_new, info.groups)
    return whitening.DataFactors(b, w_new, rel, delta.astype(info.weight.dtype), err), name


def bias_of(info) -> np.ndarray:
    """The conv's constant bias in float64 (zeros when it has none or it is not constant; a matrix op: its bias
    vector as passes.matrix reads it)."""
    if info.matrix is not None:
        return info.matrix.bias.astype(np.float64)
    node = info.node
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        t = constant_tensor(node.inputs[2])
        if t is not None:
            return t.numpy().astype(np.float64)
    return np.zeros(info.out_channels)


def feature_equations(d: Decision, bottleneck: np.ndarray, data: ConvData,
                      bias: np.ndarray) -> tuple[list[tuple], list[tuple]]:
    """For the targets y (the original outputs) and the features f = [patches of B x̂; 1], per group, on the fit
    samples and on the held-out samples (see calibrated.holdout; the fit samples when none is held out):
    [(rows, W_g flat, b_g, E[ffᵀ], E[yfᵀ], E‖y‖², positions)]. Products in float32 per sample, sums in float64."""
    info = d.info
    groups = info.groups
    cpg = info.in_channels // groups
    r = bottleneck.shape[0] // groups
    b3 = bottleneck.reshape(groups, r, cpg).astype(np.float32)

    def features(xh, g, keep, pads):
        fmap = np.moveaxis(np.tensordot(b3[g], xh[:, g * cpg:(g + 1) * cpg], axes=(1, 1)), 0, 1)  # [1, r, ...]
        return patches_mod.im2col(fmap, info.kernel, info.strides, info.dilations, pads, positions=keep)

    return equations(d, features, r * info.kernel_size + 1, data, bias)


FEATURE_ROWS = 8192  # positions whose full patches are taken at once (output form: C/g·K values each)


def reduced_equations(d: Decision, reduced: np.ndarray, data: ConvData, bias: np.ndarray,
                      full_held: bool = False) -> tuple[list[tuple], list[tuple]]:
    """feature_equations for the output form: the features are the reduced conv's outputs R x̂ (r per group, at the
    output positions), the targets the original outputs, so that the 1x1 expansion and the bias can be refitted
    (`full_held`: see equations)."""
    info = d.info
    groups = info.groups
    cpg = info.in_channels // groups
    r = reduced.shape[0] // groups
    rg = reduced.reshape(groups, r, -1).astype(np.float32)

    def features(xh, g, keep, pads):
        if keep is None:  # every output position of the sample
            keep = np.arange(xh.shape[0] * int(np.prod(info.output_shape[2:])))
        parts = [patches_mod.im2col(xh, info.kernel, info.strides, info.dilations, pads,
                                    channels=slice(g * cpg, (g + 1) * cpg), positions=keep[i:i + FEATURE_ROWS]) @ rg[g].T
                 for i in range(0, len(keep), FEATURE_ROWS)]
        return np.concatenate(parts) if parts else np.zeros((0, r), np.float32)

    return equations(d, features, r + 1, data, bias, full_held)


def equations(d: Decision, features, dim: int, data: ConvData, bias: np.ndarray,
              full_held: bool = False) -> tuple[list[tuple], list[tuple]]:
    """The normal equations of y ≈ θ [f; 1] per group, on the fit and on the held-out samples, for features
    `features(x̂, group, positions, pads)` [positions, dim - 1]: see feature_equations. With `full_held` the held-out
    equations carry E[y yᵀ] (a matrix) in place of E‖y‖², so that output_error can weigh the error by a metric."""
    info = d.info
    groups, n = info.groups, info.out_channels
    per_group = n // groups
    pads = patches_mod.explicit_pads(info.input_shape[2:], info.kernel, info.strides, info.dilations, info.pads,
                                     info.auto_pad)
    sums = {held: [_FeatureSums(dim, per_group, full=held and full_held) for _ in range(groups)]
            for held in (False, True)}
    count = len(data.y)
    x_hat = data.x_hat if data.x_hat is not None else data.x
    for i in range(count):
        xh = np.asarray(x_hat[i], np.float32)
        y = np.asarray(data.y[i], np.float32)
        target = np.moveaxis(y, 1, -1).reshape(-1, n)  # [positions, N], rows ordered like im2col's
        keep = data.positions(i, len(target), dim)
        if keep is not None:
            target = target[keep]
        for g, acc in enumerate(sums[is_held_out(i, count)]):
            acc.add(features(xh, g, keep, pads), target[:, g * per_group:(g + 1) * per_group])
    for acc in sums[False] + sums[True]:
        acc.flush()
    if not any(a.count for a in sums[True]):  # too few samples to hold any out: judge on the fit samples
        sums[True] = sums[False]
    out = []
    for held in (False, True):
        eqs = []
        for g, acc in enumerate(sums[held]):
            rows = slice(g * per_group, (g + 1) * per_group)
            w = info.weight[rows].reshape(per_group, -1)
            c = max(acc.count, 1)
            eqs.append((rows, w, bias[rows], acc.ff / c, acc.yf / c, (acc.yyt if acc.full else acc.yy) / c, acc.count))
        out.append(eqs)
    return out[0], out[1]


class _FeatureSums:
    """Σ f fᵀ, Σ y fᵀ, Σ‖y‖² and the count over rows of features f = [patches; 1] and targets y, taken in chunks of
    at least CHUNK_ROWS rows (float32 products, float64 sums)."""

    CHUNK_ROWS = 4096

    def __init__(self, dim: int, outputs: int, full: bool = False) -> None:
        self.ff = np.zeros((dim, dim))
        self.yf = np.zeros((outputs, dim))
        self.yy = 0.0
        self.full = full  # also Σ y yᵀ
        self.yyt = np.zeros((outputs, outputs)) if full else None
        self.count = 0
        self._f: list[np.ndarray] = []
        self._y: list[np.ndarray] = []
        self._rows = 0

    def add(self, patches: np.ndarray, targets: np.ndarray) -> None:
        self._f.append(patches)
        self._y.append(targets)
        self._rows += len(patches)
        if self._rows >= self.CHUNK_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        f1 = np.empty((self._rows, self.ff.shape[0]), np.float32)
        np.concatenate(self._f, out=f1[:, :-1])
        f1[:, -1] = 1.0
        t = np.concatenate(self._y).astype(np.float32, copy=False)
        self.ff += f1.T @ f1
        self.yf += t.T @ f1
        self.yy += float(np.sum(np.square(t, dtype=np.float64)))
        if self.full:
            self.yyt += t.T @ t
        self.count += self._rows
        self._f, self._y, self._rows = [], [], 0


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
        ridge = whitening.ridge_for(dim, count) * max(np.trace(ff[:-1, :-1]) / max(dim - 1, 1), 1e-30)
        theta0 = np.empty((w.shape[0], dim))
        theta0[:, :-1] = start.weight[rows].reshape(w.shape[0], -1)
        theta0[:, -1] = b + (start_delta[rows] if start_delta is not None else 0.0)
        theta = np.linalg.solve(ff + ridge * np.eye(dim), (yf + ridge * theta0).T).T
        w_new[rows] = theta[:, :-1].reshape((w.shape[0], r) + tuple(kernel))
        delta[rows] = theta[:, -1] - b
    return w_new, delta


def output_error(equations: list[tuple], new_weight: np.ndarray, delta: np.ndarray,
                 metric: np.ndarray | None = None) -> float:
    """Relative output error ‖(W p + b) − (W' (B⊗I) p̂ + b + delta)‖ over the positions behind `equations`; with
    `metric` G [N, N] (and equations carrying E[y yᵀ]: equations(full_held=True)) the error eᵀ G e relative to yᵀ G y."""
    num = den = 0.0
    for rows, w, b, ff, yf, yy, _ in equations:
        theta = np.concatenate([new_weight[rows].reshape(w.shape[0], -1).astype(np.float64), (b + delta[rows])[:, None]], axis=1)
        if metric is not None and np.ndim(yy) == 2:
            g = metric[rows, rows]
            cross = theta @ yf.T
            num += max(float(np.sum(g * (yy - cross - cross.T + theta @ ff @ theta.T))), 0.0)
            den += float(np.sum(g * yy))
            continue
        yy = float(np.trace(yy)) if np.ndim(yy) == 2 else yy
        num += max(yy - 2 * float(np.sum(yf * theta)) + float(np.sum((theta @ ff) * theta)), 0.0)
        den += yy
    return float(np.sqrt(num / den)) if den > 0 else 0.0


def measure(original: ir.Model, rewritten: ir.Model, samples: list[dict], names: list[str]) -> dict[str, float]:
    """Relative L2 error of each named value of `rewritten` against `original`, over all samples (two whole-model
    runs: an independent check of what the streaming walk measures)."""
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


def best_candidate(d: Decision, starts: list[tuple[str, factorize.Factors]], equations_for, second_kernel,
                   form: str, metric: np.ndarray | None = None) -> tuple[factorize.Factors, str]:
    """Of the `starts` (name, Factors of `form`), each as is and, unless the rewrite is lossless, with its second
    conv and the bias refitted (`equations_for(first factor)` gives the fit and held-out equations), the one with the
    smallest held-out output error (weighed by `metric` when given: calibrated.consumer), as Factors
    (predicted_error: its plain relative output error there) and its name."""
    info = d.info
    best = None
    for label, start in starts:
        delta0 = start.bias_delta.astype(np.float64) if start.bias_delta is not None else np.zeros(info.out_channels)
        fit_eq, held_eq = equations_for(start.bottleneck)
        options = [(label, start.weight, delta0)]
        if not d.lossless:
            options.append((label + "+refit", *refit(fit_eq, start, second_kernel)))
        for name, second, delta in options:
            err = output_error(held_eq, second, delta, metric)
            if best is None or err < best[4]:
                best = (name, start.bottleneck, second, delta, err, held_eq)
    name, first, second, delta, err, held_eq = best
    err = output_error(held_eq, second, delta) if metric is not None else err
    second = second.astype(info.weight.dtype)
    rel = factorize.weight_rel_error(info.weight, first, second, info.groups, form)
    return factorize.Factors(first, second, rel, delta.astype(info.weight.dtype), err, form=form), name
