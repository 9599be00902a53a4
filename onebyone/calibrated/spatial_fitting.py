"""Fitting the spatial form (a kh x 1 conv to r channels per group, then a 1 x kw conv; in 3D kd x 1 x 1, then
1 x kh x kw) on calibration data.

Candidates: the weight's own SVD of the [C/g·k0, N/g·K'] unfolding (k0 the taps of the first axis, K' the others'),
and the one whitened by the input channel statistics (the first axis's taps treated as uncorrelated), each as is and
with the second conv and the bias refitted by least squares on the first conv's outputs over the inputs the rewritten
model gives it. The candidate with the smallest output error on held-out calibration samples wins.
"""

from __future__ import annotations

import numpy as np

from onebyone.calibrated import fitting, whitening
from onebyone.calibrated import patches as patches_mod
from onebyone.passes import factorize
from onebyone.passes.plan import Decision
from onebyone.passes.rewrite import split_attributes


def whitened(weight: np.ndarray, groups: int, rank: int, s_xx: np.ndarray, reg: float) -> factorize.Factors:
    """Spatial factors minimising E‖(S_i − F G)ᵀ x‖² per group for first-axis patches x with covariance S ⊗ I."""
    k0, cpg = weight.shape[2], weight.shape[1]
    parts = []
    for g, m in enumerate(factorize.unfold_spatial(weight, groups)):
        sl = slice(g * cpg, (g + 1) * cpg)
        root, inv = whitening.sqrt_and_inverse(s_xx[sl, sl], reg)
        u, s, vt = np.linalg.svd(np.kron(root, np.eye(k0)) @ m, full_matrices=False)
        k = min(rank, len(s))
        parts.append((np.kron(inv, np.eye(k0)) @ u[:, :k], s[:k, None] * vt[:k]))
    return factorize.assemble_spatial(weight, groups, rank, parts)


def first_outputs_equations(d: Decision, first: np.ndarray, data: fitting.ConvData, bias: np.ndarray):
    """fitting.equations for the spatial form: the features are the patches (1 x the other axes' taps, their
    strides, dilations and pads) of the first conv's outputs over x̂."""
    info = d.info
    cpg = info.in_channels // info.groups
    r = first.shape[0] // info.groups
    fg = first.reshape(info.groups, r, -1).astype(np.float32)
    split = {}  # explicit pads -> the two convs' geometry as the rewrite writes them (the same pads at every call)

    def features(xh, g, keep, pads):
        if pads not in split:
            split[pads] = split_attributes("spatial", info.kernel, info.strides, info.dilations, pads, "NOTSET", 1)
        one, two = split[pads]
        col = patches_mod.im2col(xh, one["kernel_shape"], one["strides"], one["dilations"], one["pads"],
                                 channels=slice(g * cpg, (g + 1) * cpg))
        rows = xh.shape[0], info.output_shape[2], *xh.shape[3:]
        z = np.moveaxis((col @ fg[g].T).reshape(*rows, r), -1, 1)  # [batch, r, first axis out, other axes in]
        return patches_mod.im2col(z, two["kernel_shape"], two["strides"], two["dilations"], two["pads"], positions=keep)

    return fitting.equations(d, features, r * info.spatial_taps[1] + 1, data, bias)


def fit(d: Decision, data: fitting.ConvData) -> tuple[factorize.Factors, str]:
    """Data-aware spatial-form factors of one conv and the name of the candidate that won on held-out samples."""
    info = d.info
    bias = fitting.bias_of(info)
    reg = max(whitening.DEFAULT_REG, whitening.ridge_for(info.in_channels // info.groups, d.moments.count))
    starts = [("svd", factorize.factorize_spatial_svd(info.weight, info.groups, d.rank)),
              ("whitened", whitened(info.weight, info.groups, d.rank, d.moments.second_moment, reg))]
    return fitting.best_candidate(d, starts, lambda first: first_outputs_equations(d, first, data, bias),
                                  (1, *info.kernel[1:]), "spatial")
