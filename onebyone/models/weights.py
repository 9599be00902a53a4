"""Conv weights for generated models: random (full rank) or exactly low-rank along input or output channels."""

from __future__ import annotations

import numpy as np

from onebyone.passes.factorize import tucker2_ranks


def random_weight(out_ch: int, in_per_group: int, kernel: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """He-initialized float32 weight [out_ch, in_per_group, *kernel] (full rank with probability 1)."""
    fan_in = in_per_group * int(np.prod(kernel))
    return (rng.standard_normal((out_ch, in_per_group) + tuple(kernel)) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def low_rank_weight(
    out_ch: int, in_per_group: int, kernel: tuple[int, ...], groups: int, rank: int, rng: np.random.Generator
) -> np.ndarray:
    """Float32 weight whose every group, unfolded along input channels, has rank exactly min(rank, in_per_group).

    Scaled like He initialization so activations keep their magnitude through deep nets.
    """
    per_group = out_ch // groups
    k = int(np.prod(kernel))
    r = min(rank, in_per_group, per_group * k)
    w = np.empty((out_ch, in_per_group) + tuple(kernel), dtype=np.float64)
    for g in range(groups):
        m = rng.standard_normal((in_per_group, r)) @ rng.standard_normal((r, per_group * k)) / np.sqrt(r)
        w[g * per_group : (g + 1) * per_group] = m.reshape((in_per_group, per_group) + tuple(kernel)).swapaxes(0, 1)
    w *= np.sqrt(2.0 / (in_per_group * k))
    return w.astype(np.float32)


def low_rank_output_weight(
    out_ch: int, in_per_group: int, kernel: tuple[int, ...], groups: int, rank: int, rng: np.random.Generator
) -> np.ndarray:
    """Float32 weight whose every group, unfolded along output channels ([N/g, C/g·K]), has rank exactly
    min(rank, N/g, C/g·K): exact for the output form (a conv to `rank` channels per group, then a 1x1)."""
    per_group = out_ch // groups
    k = int(np.prod(kernel))
    r = min(rank, per_group, in_per_group * k)
    w = np.empty((out_ch, in_per_group * k), dtype=np.float64)
    for g in range(groups):
        w[g * per_group : (g + 1) * per_group] = (rng.standard_normal((per_group, r))
                                                  @ rng.standard_normal((r, in_per_group * k)) / np.sqrt(r))
    w *= np.sqrt(2.0 / (in_per_group * k))
    return w.reshape((out_ch, in_per_group) + tuple(kernel)).astype(np.float32)


def low_rank_spatial_weight(
    out_ch: int, in_per_group: int, kernel: tuple[int, ...], groups: int, rank: int, rng: np.random.Generator
) -> np.ndarray:
    """Float32 2D- or 3D-kernel weight whose every group, unfolded as [(c, y), (n, x)] ([C/g·k0, N/g·K']: the first
    axis's taps y against the other axes' taps x), has rank exactly min(rank, C/g·k0, N/g·K'): exact for the spatial
    form (a k0 x 1 (x 1) conv to `rank` channels, then a 1 x .. conv over the other axes)."""
    per_group = out_ch // groups
    k0, rest = kernel[0], int(np.prod(kernel[1:]))
    r = min(rank, in_per_group * k0, per_group * rest)
    w = np.empty((out_ch, in_per_group, k0, rest), dtype=np.float64)
    for g in range(groups):
        m = rng.standard_normal((in_per_group * k0, r)) @ rng.standard_normal((r, per_group * rest)) / np.sqrt(r)
        w[g * per_group : (g + 1) * per_group] = m.reshape(in_per_group, k0, per_group, rest).transpose(2, 0, 1, 3)
    w *= np.sqrt(2.0 / (in_per_group * k0 * rest))
    return w.reshape((out_ch, in_per_group) + tuple(kernel)).astype(np.float32)


def low_rank_tucker2_weight(
    out_ch: int, in_per_group: int, kernel: tuple[int, ...], groups: int, rank: int, rng: np.random.Generator
) -> np.ndarray:
    """Float32 weight whose every group has multilinear ranks exactly the Tucker-2 ranks (r1, r2) of rank knob `rank`
    (passes.factorize.tucker2_ranks: both channel sides reduced in proportion): a random core [r2, r1, *kernel]
    between random channel factors. Exact for the Tucker-2 form (1x1 to r1, the kernel to r2, 1x1 to N)."""
    per_group = out_ch // groups
    k = int(np.prod(kernel))
    r1, r2 = tucker2_ranks(in_per_group, per_group, rank)
    r1, r2 = min(r1, r2 * k), min(r2, r1 * k)
    w = np.empty((out_ch, in_per_group, k), dtype=np.float64)
    for g in range(groups):
        core = rng.standard_normal((r2, r1, k))
        w[g * per_group:(g + 1) * per_group] = np.einsum("srk,ns,cr->nck", core, rng.standard_normal((per_group, r2)),
                                                         rng.standard_normal((in_per_group, r1))) / np.sqrt(r1 * r2)
    w *= np.sqrt(2.0 / (in_per_group * k))
    return w.reshape((out_ch, in_per_group) + tuple(kernel)).astype(np.float32)
