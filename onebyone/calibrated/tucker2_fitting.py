"""Fitting the Tucker-2 form (a 1x1 squeeze to r1 channels per group, the kernel to r2, a 1x1 back to N) on
calibration data.

Candidates: the weight's own Tucker-2 (HOOI), and the data-aware one: the squeeze as the input form fits it (from
the input channel statistics, whitened), then the reduced-rank regression of the conv's original outputs on the
squeezed input's patches (the least-squares kxk weight, projected on the principal r2-dimensional subspace of what it
predicts: core = Uᵀ θ, the discarded directions' mean kept through the bias).
Each is taken as is and with the 1x1 expansion and the bias refitted by least squares on the core's outputs over the
inputs the rewritten model gives the conv; the one with the smallest output error on held-out calibration samples
wins, so the result is never worse than the weight's HOOI there.
"""

from __future__ import annotations

import numpy as np

from onebyone.calibrated import consumer, fitting, whitening
from onebyone.passes import factorize
from onebyone.passes.plan import Decision


def one_sided(d: Decision, data: fitting.ConvData, bias: np.ndarray,
              metric: np.ndarray | None = None) -> dict[str, factorize.Factors]:
    """Tucker-2 factors at d.rank with the squeeze B of the input form's whitened fit, the kxk weight and bias θ
    (W' and the mean shift of that fit, "whitened+pca"; or the least-squares refit of the original outputs on the
    patches of B x̂, "whitened+rrr": a reduced-rank regression) projected on the principal r2-dimensional subspace U of
    the outputs θ f it predicts (core = Uᵀ θ, the discarded directions' mean kept through the bias)."""
    info, m = d.info, d.moments
    groups = info.groups
    r1, r2 = info.tucker2_ranks(d.rank)
    paired = data.paired_moments()
    s_xh, s_hh, mean_x, mean_h = paired.paired() if paired is not None else (m.second_moment, m.second_moment,
                                                                               m.mean, m.mean)
    reg = max(whitening.DEFAULT_REG, whitening.ridge_for(info.in_channels // groups, m.count))
    inner = whitening.factorize_data(info.weight, groups, r1, s_xh, s_hh, m.second_moment, mean_x, mean_h, reg,
                                     predict=False)
    fit_eq, _ = fitting.feature_equations(d, inner.bottleneck, data, bias)
    inner_delta = inner.bias_delta.astype(np.float64) if inner.bias_delta is not None else np.zeros(len(bias))
    refitted = fitting.refit(fit_eq, inner, info.kernel)
    out = {"whitened+pca": _projected(info, inner.bottleneck, inner.weight, inner_delta, fit_eq, bias, (r1, r2)),
           "whitened+rrr": _projected(info, inner.bottleneck, *refitted, fit_eq, bias, (r1, r2))}
    if metric is not None:  # the subspace that matters to the conv reading the output (calibrated.consumer)
        out["whitened+rrr (consumer)"] = _projected(info, inner.bottleneck, *refitted, fit_eq, bias, (r1, r2), metric)
    return out


def _projected(info, squeeze: np.ndarray, weight: np.ndarray, delta: np.ndarray, fit_eq, bias: np.ndarray,
               ranks: tuple[int, int], metric: np.ndarray | None = None) -> factorize.Factors:
    """The input-form factors (squeeze, weight, bias + delta) with their outputs projected per group on the principal
    r2-dimensional subspace of what they predict on the fit samples (feature moments `fit_eq`; principal for the
    error eᵀ G e with `metric` G: expansion G^-½ U, core Uᵀ G^½ θ)."""
    groups, n = info.groups, info.out_channels
    r1, r2 = ranks
    squeeze = squeeze.astype(np.float64).reshape(groups, r1, -1)
    parts, final_bias = [], np.zeros(n)
    for g, (rows, _, b, ff, _, _, _) in enumerate(fit_eq):
        theta = np.concatenate([weight[rows].reshape(len(b), -1), (b + delta[rows])[:, None]], axis=1)
        mean_y = theta @ ff[:, -1]  # E[θ f]: the last feature is the constant 1
        expand, project = consumer.principal_basis(theta @ ff @ theta.T - np.outer(mean_y, mean_y), r2,
                                                   metric[rows, rows] if metric is not None else None)
        parts.append((squeeze[g].T, (project @ theta[:, :-1]).reshape((len(project), r1) + info.kernel), expand))
        final_bias[rows] = expand @ (project @ theta[:, -1]) + mean_y - expand @ (project @ mean_y)
    return factorize.assemble_tucker2(info.weight, groups, ranks, parts,
                                      bias_delta=(final_bias - bias).astype(info.weight.dtype))


def fit(d: Decision, data: fitting.ConvData) -> tuple[factorize.Factors, str]:
    """Data-aware Tucker-2 factors of one conv and the name of the candidate that won on held-out samples."""
    info = d.info
    bias = fitting.bias_of(info)
    metric = consumer.metric(info.node) if not d.lossless else None
    starts = {"hooi": factorize.factorize_tucker2(info.weight, info.groups, d.rank),
              **one_sided(d, data, bias, metric)}
    won, name = fitting.best_candidate(d, [(k, t.output_part(info.groups)) for k, t in starts.items()],
                                       lambda reduced: fitting.reduced_equations(d, reduced, data, bias,
                                                                                 metric is not None),
                                       (1,) * len(info.kernel), "output", metric)
    t = starts[name.removesuffix("+refit")]
    rel = factorize.weight_rel_error(info.weight, t.bottleneck, t.weight, info.groups, expand=won.weight)
    return factorize.Factors(t.bottleneck, t.weight, rel, won.bias_delta, won.predicted_error, form="tucker2",
                             expand=won.weight), name
