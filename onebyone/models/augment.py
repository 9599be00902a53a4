"""More calibration inputs from few photos: seeded random resized crops and horizontal flips."""

from __future__ import annotations

import numpy as np


def random_crops(images: list[np.ndarray], count: int, seed: int = 0, min_scale: float = 0.25) -> list[np.ndarray]:
    """`count` RGB crops (each a random area fraction in [min_scale, 1] of a random photo, aspect ratio in
    [3/4, 4/3], flipped half of the time), cycling through `images`. Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        img = images[i % len(images)]
        h, w = img.shape[:2]
        area = rng.uniform(min_scale, 1.0) * h * w
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        ch = int(min(h, round(np.sqrt(area / aspect))))
        cw = int(min(w, round(np.sqrt(area * aspect))))
        y = int(rng.integers(0, h - ch + 1))
        x = int(rng.integers(0, w - cw + 1))
        crop = img[y : y + ch, x : x + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out.append(np.ascontiguousarray(crop))
    return out
