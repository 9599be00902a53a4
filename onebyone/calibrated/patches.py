"""Conv input patches (im2col) exactly as a Conv node sees them: its pads (or auto_pad), strides, dilations."""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def explicit_pads(spatial_in, kernel, strides, dilations, pads, auto_pad) -> tuple[int, ...]:
    """Begin pads then end pads, resolving auto_pad like onnxruntime."""
    nd = len(kernel)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for i in range(nd):
            eff = dilations[i] * (kernel[i] - 1) + 1
            out = math.ceil(spatial_in[i] / strides[i])
            total = max((out - 1) * strides[i] + eff - spatial_in[i], 0)
            small = total // 2
            begins.append(small if auto_pad == "SAME_UPPER" else total - small)
            ends.append(total - begins[-1])
        return tuple(begins + ends)
    if auto_pad == "VALID":
        return (0,) * (2 * nd)
    return tuple(pads) if pads else (0,) * (2 * nd)


def im2col(x: np.ndarray, kernel, strides, dilations, pads, channels: slice | None = None,
           positions: np.ndarray | None = None) -> np.ndarray:
    """Patches of x [N, C, *spatial] as rows [positions, C' * prod(kernel)] (index c * K + tap, matching
    W.reshape(N, -1)); `channels` restricts to a group's channels. `pads` are explicit begin+end pads. With
    `positions` (indices into the flattened [N, *out] positions), only those rows, in that order."""
    nd = len(kernel)
    if channels is not None:
        x = x[:, channels]
    pad_width = [(0, 0), (0, 0)] + [(pads[i], pads[i + nd]) for i in range(nd)]
    xp = np.pad(x, pad_width)
    window = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilations))
    v = sliding_window_view(xp, window, axis=tuple(range(2, 2 + nd)))
    index = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides) + tuple(
        slice(None, None, d) for d in dilations
    )
    v = v[index]  # [N, C, *out, *kernel]
    c = v.shape[1]
    v = np.moveaxis(v, 1, 1 + nd)  # [N, *out, C, *kernel]
    if positions is not None:
        v = v[np.unravel_index(positions, v.shape[: 1 + nd])]  # [len(positions), C, *kernel], only those copied
    return v.reshape(-1, c * int(np.prod(kernel)))
