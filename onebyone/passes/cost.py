"""Exact MAC cost model of a convolution and of its bottlenecked form.

All counts are per batch item. `spatial_in` / `spatial_out` are the products of the input and output spatial
dims; `kernel` is the product of the kernel dims. A 1x1 bottleneck runs at the *input* resolution, so a strided
conv has a lower break-even rank than a stride-1 conv.
"""

from __future__ import annotations

import math


def conv_macs(spatial_out: int, out_channels: int, in_channels: int, groups: int, kernel: int) -> int:
    """MACs of a (grouped) conv: every output element sums over in_channels/groups * kernel inputs."""
    return spatial_out * out_channels * (in_channels // groups) * kernel


def bottleneck_macs(
    spatial_in: int, spatial_out: int, out_channels: int, in_channels: int, groups: int, kernel: int, rank: int
) -> int:
    """MACs of Conv1x1(B: groups*rank x in_channels/groups) followed by Conv(W': out_channels x rank x kernel).

    `rank` is per group.
    """
    squeeze = spatial_in * groups * rank * (in_channels // groups)
    expand = spatial_out * out_channels * rank * kernel
    return squeeze + expand


def break_even_rank(
    spatial_in: int, spatial_out: int, out_channels: int, in_channels: int, groups: int, kernel: int
) -> float:
    """The per-group rank at which the bottlenecked conv costs as much as the original.

    A rewrite with rank r lowers MACs if and only if r < break_even_rank(...).
    """
    original = conv_macs(spatial_out, out_channels, in_channels, groups, kernel)
    per_rank = bottleneck_macs(spatial_in, spatial_out, out_channels, in_channels, groups, kernel, 1)
    return original / per_rank if per_rank else 0.0


def max_profitable_rank(break_even: float) -> int:
    """The largest integer rank strictly below the break-even rank (0 when none)."""
    return max(0, math.ceil(break_even) - 1)


def output_macs(spatial_out: int, out_channels: int, in_channels: int, groups: int, kernel: int, rank: int) -> int:
    """MACs of the output form: Conv(R: groups*rank x in_channels/groups x kernel) then Conv1x1(E: out_channels x
    rank), both at the output resolution. `rank` is per group."""
    return spatial_out * (groups * rank * (in_channels // groups) * kernel + out_channels * rank)


def output_break_even_rank(spatial_out: int, out_channels: int, in_channels: int, groups: int, kernel: int) -> float:
    """The per-group rank at which the output form costs as much as the original conv."""
    per_rank = output_macs(spatial_out, out_channels, in_channels, groups, kernel, 1)
    return conv_macs(spatial_out, out_channels, in_channels, groups, kernel) / per_rank if per_rank else 0.0


def spatial_macs(first_positions: int, spatial_out: int, out_channels: int, in_channels: int, groups: int,
                 first_taps: int, other_taps: int, rank: int) -> int:
    """MACs of the spatial form of a 2D or 3D conv: Conv(k0 x 1 (x 1) to groups*rank channels) at `first_positions`
    (the output size along the first axis times the input size along the others: its stride applied, theirs not),
    then Conv(1 x the other taps) at the output resolution. `rank` is per group."""
    return (first_positions * groups * rank * (in_channels // groups) * first_taps
            + spatial_out * out_channels * rank * other_taps)


def tucker2_macs(spatial_in: int, spatial_out: int, out_channels: int, in_channels: int, groups: int, kernel: int,
                 rank_in: int, rank_out: int) -> int:
    """MACs of the Tucker-2 form: Conv1x1(C -> groups*rank_in) at the input resolution, Conv(groups*rank_in ->
    groups*rank_out, the kernel) and Conv1x1(groups*rank_out -> N) at the output resolution. Ranks are per group."""
    squeeze = spatial_in * groups * rank_in * (in_channels // groups)
    core = spatial_out * groups * rank_out * rank_in * kernel
    return squeeze + core + spatial_out * out_channels * rank_out
