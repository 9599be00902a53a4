"""Per-conv decisions: the rank a policy picks, whether the rewrite pays, and the factors it would insert."""

from __future__ import annotations

import dataclasses

import numpy as np

from onebyone.passes import cost, factorize
from onebyone.passes.analysis import ConvInfo
from onebyone.passes.rank_policy import RankPolicy
from onebyone.report import LayerReport


@dataclasses.dataclass
class Decision:
    """What to do with one conv. `factors` is set exactly when the conv is to be rewritten."""

    info: ConvInfo
    layer: LayerReport
    factors: factorize.Factors | None = None


def decide(info: ConvInfo, policy: RankPolicy, cache: dict | None = None) -> Decision:
    """Decide one conv. A rewrite is planned only when its rank is strictly below break-even (fewer MACs).

    `cache` maps (weight identity, rank) to factors so that convs sharing one weight share its factors.
    """
    layer = _base_layer(info)
    if info.skip_reason is not None:
        layer.reason = info.skip_reason
        return Decision(info, layer)
    matrix_shape = info.matrix_shape
    numerical = max(factorize.numerical_rank(s, matrix_shape, info.weight.dtype) for s in info.svals)
    layer.numerical_rank = numerical
    rank, lossless = policy.choose(info.svals, matrix_shape, info.weight.dtype)
    layer.rank = rank
    layer.energy_kept = _energy_kept(info.svals, rank)
    be = info.break_even_rank
    if rank >= be:
        if policy.kind == "exact":
            layer.reason = f"numerical rank {numerical} is not below break-even {be:.1f}: no lossless rewrite lowers MACs"
        else:
            layer.reason = f"rank {rank} ({policy.describe()}) is not below break-even {be:.1f}: it would not lower MACs"
        return Decision(info, layer)
    key = (id(info.node.inputs[1]), rank)
    factors = cache.get(key) if cache is not None else None
    if factors is None:
        factors = factorize.factorize_svd(info.weight, info.groups, rank)
        if cache is not None:
            cache[key] = factors
    layer.action = "rewritten"
    layer.lossless = lossless
    layer.reason = (
        f"lossless: weight has numerical rank {numerical} < break-even {be:.1f}"
        if lossless
        else f"approximate: rank {rank} of {matrix_shape[0]} keeps {layer.energy_kept:.4f} of the weight energy"
    )
    layer.weight_rel_error = factors.rel_error
    layer.macs_after = cost.bottleneck_macs(
        info.spatial_in, info.spatial_out, info.out_channels, info.in_channels, info.groups, info.kernel_size, rank
    )
    layer.params_after = int(factors.bottleneck.size + factors.weight.size + (info.out_channels if info.has_bias else 0))
    return Decision(info, layer, factors)


def _energy_kept(svals: list[np.ndarray], rank: int) -> float:
    kept = [float((s[:rank] ** 2).sum() / (s**2).sum()) if (s**2).sum() > 0 else 1.0 for s in svals]
    return min(kept) if kept else 1.0


def _base_layer(info: ConvInfo) -> LayerReport:
    return LayerReport(
        name=info.name,
        action="skipped",
        reason="",
        kernel=list(info.kernel),
        in_channels=info.in_channels,
        out_channels=info.out_channels,
        groups=info.groups,
        strides=list(info.strides),
        input_shape=list(info.input_shape) if info.input_shape else None,
        output_shape=list(info.output_shape) if info.output_shape else None,
        weight_source=info.weight_source,
        rank=None,
        numerical_rank=None,
        break_even_rank=round(info.break_even_rank, 3),
        lossless=False,
        macs_before=info.macs,
        macs_after=info.macs,
        params_before=info.params,
        params_after=info.params,
        singular_values=[s.tolist() for s in info.svals] if info.svals else None,
    )
