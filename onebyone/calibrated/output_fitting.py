"""Fitting the output form (a conv to r channels per group, then a 1x1 back to N) on calibration data.

The best rank-r output subspace for the conv's outputs y is their principal subspace U (PCA of y's covariance, per
group): y ≈ U Uᵀ (W p) with the mean restored through the bias, exact when the outputs span at most r dimensions.
With upstream convs rewritten (x̂ ≠ x) the 1x1 expansion and the bias are refitted by least squares on the reduced
conv's outputs over x̂, as the input form refits its kxk weight. Candidates (weight SVD, PCA, each as is and
refitted) are scored on held-out samples; the best wins, so the result is never worse than weight SVD there. When a
conv reads the output (calibrated.consumer), a third candidate is principal in that conv's metric, and all are scored
in it: the variance of an output direction says little about whether the next conv reads it.
"""

from __future__ import annotations

import numpy as np

from onebyone.calibrated import consumer, fitting
from onebyone.calibrated.holdout import is_held_out
from onebyone.passes import factorize
from onebyone.passes.plan import Decision


def output_moments(data: fitting.ConvData, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """E[y yᵀ] and E[y] of the conv's original outputs over the fit samples (all samples when none is held out)."""
    count = len(data.y)
    use = [i for i in range(count) if not is_held_out(i, count)] or list(range(count))
    outer = total = None
    positions = 0
    for i in use:
        y = np.asarray(data.y[i])
        ym = np.moveaxis(y, 1, 0).reshape(y.shape[1], -1).astype(np.float64)
        outer = ym @ ym.T if outer is None else outer + ym @ ym.T
        total = ym.sum(axis=1) if total is None else total + ym.sum(axis=1)
        positions += ym.shape[1]
    return outer / max(positions, 1), total / max(positions, 1)


def principal(weight: np.ndarray, groups: int, rank: int, s_yy: np.ndarray, mean_y: np.ndarray,
              bias: np.ndarray, metric: np.ndarray | None = None) -> factorize.Factors:
    """Output-form factors from the principal subspace of the outputs: E = U (orthonormal), R = Uᵀ W per group, and
    the bias corrected by (I − U Uᵀ)(E[y] − b) so the discarded directions keep their mean. With `metric` G (what the
    consumer reads: calibrated.consumer) the subspace is principal for the error eᵀ G e: E = G^-½ U, R = Uᵀ G^½ W with
    U principal for G^½ y."""
    per_group = weight.shape[0] // groups
    parts, delta = [], np.zeros(weight.shape[0])
    for g, m in enumerate(factorize.unfold_output(weight, groups)):
        sl = slice(g * per_group, (g + 1) * per_group)
        expand, project = consumer.principal_basis(s_yy[sl, sl] - np.outer(mean_y[sl], mean_y[sl]), rank,
                                                   metric[sl, sl] if metric is not None else None)
        parts.append((expand, project @ m))
        shift = mean_y[sl] - bias[sl]
        delta[sl] = shift - expand @ (project @ shift)
    return factorize.assemble_output(weight, groups, rank, parts, bias_delta=delta.astype(weight.dtype))


def fit(d: Decision, data: fitting.ConvData) -> tuple[factorize.Factors, str]:
    """Data-aware output-form factors of one conv and the name of the candidate that won on held-out samples."""
    info = d.info
    bias = fitting.bias_of(info)
    s_yy, mean_y = output_moments(data, info.groups)
    pca = principal(info.weight, info.groups, d.rank, s_yy, mean_y, bias)
    starts = [("pca", pca)] if d.lossless else [("svd", factorize.factorize_output_svd(info.weight, info.groups, d.rank)),
                                                ("pca", pca)]
    metric = consumer.metric(info.node) if not d.lossless else None
    if metric is not None:  # the subspace that matters to the conv reading the output, judged in its metric
        starts.append(("pca (consumer)", principal(info.weight, info.groups, d.rank, s_yy, mean_y, bias, metric)))
    return fitting.best_candidate(d, starts, lambda reduced: fitting.reduced_equations(d, reduced, data, bias,
                                                                                       metric is not None),
                                  (1,) * len(info.kernel), "output", metric)
