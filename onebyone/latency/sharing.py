"""One kernel shape per group of identical convs: on a runtime that tunes a kernel per shape (TVM), every distinct
rank is one more 1x1 and one more kxk kernel to tune, so identical convs (same input shape, channels, kernel,
strides, dilations, pads, groups: ResNet stages repeat them) rewritten at different ranks are given one rank when the
measured pairs say it costs little."""

from __future__ import annotations

from collections import defaultdict

from onebyone.passes import plan

TOLERANCE = 0.05  # the shared rank may cost the group this much more measured time than the ranks chosen alone


def share_kernel_shapes(decisions: list, signature, pair_time, tolerance: float = TOLERANCE) -> int:
    """Give the rewritten convs of each signature (`signature(d)`) the largest rank chosen among them, when their
    measured pairs at that rank (`pair_time(d, rank)`, a Timing) cost the group at most `tolerance` more than at
    their own ranks. Raising a rank never adds error (a lossless rewrite stays lossless); the time budget may be
    exceeded by that tolerance. Returns how many convs changed rank."""
    groups: dict[str, list] = defaultdict(list)
    for d in decisions:
        if d.rank is not None and d.latency:
            groups[signature(d)].append(d)
    changed = 0
    for members in groups.values():
        top = max(d.rank for d in members)
        if all(d.rank == top for d in members):
            continue
        own = sum(pair_time(d, d.rank).ms for d in members)
        shared = sum(pair_time(d, top).ms for d in members)
        if shared > own * (1 + tolerance):
            continue
        for d in members:
            if d.rank != top:
                plan.accept(d, top)
                d.reason += f" (rank raised to share one kernel shape with {len(members) - 1} identical conv(s))"
                changed += 1
    return changed
