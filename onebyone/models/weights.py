"""Conv weights for generated models: random (full rank) or exactly low-rank along input channels."""

from __future__ import annotations

import numpy as np


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
