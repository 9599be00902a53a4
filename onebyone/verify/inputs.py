"""Verification inputs: K samples per model input, from random data, an .npz file or a folder of images."""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path

import numpy as np

from onebyone.errors import OneByOneError

Samples = list[dict[str, np.ndarray]]  # one feed dict per sample

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def random_samples(
    input_shapes: dict[str, tuple[int, ...]], dtypes: dict[str, np.dtype], count: int = 4, seed: int = 0
) -> Samples:
    """`count` feeds of standard-normal floats (zeros for integer and bool inputs), reproducible by seed."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        feed = {}
        for name, shape in input_shapes.items():
            dtype = np.dtype(dtypes[name])
            if np.issubdtype(dtype, np.floating):
                feed[name] = rng.standard_normal(shape).astype(dtype)
            else:
                feed[name] = np.zeros(shape, dtype=dtype)
        out.append(feed)
    return out


def npz_samples(path: str | Path, input_shapes: dict[str, tuple[int, ...]], dtypes: dict[str, np.dtype]) -> Samples:
    """Samples from an .npz holding, per model input name, an array [K, *input_shape], or, for an input whose batch
    dim is 1, the K samples stacked along it ([K, *input_shape[1:]]: each sample is one row, with its batch axis)."""
    p = Path(path)
    if not p.is_file():
        raise OneByOneError(f"{p}: no such inputs file")
    try:
        with np.load(p, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise OneByOneError(f"{p}: not a readable .npz file ({exc})") from None
    unknown = sorted(set(arrays) - set(input_shapes))
    if unknown:
        raise OneByOneError(f"{p}: unknown input name {unknown[0]!r}; the model's inputs are {sorted(input_shapes)}")
    missing = sorted(set(input_shapes) - set(arrays))
    if missing:
        raise OneByOneError(f"{p}: no array for model input {missing[0]!r}")
    counts = set()
    for name, arr in arrays.items():
        want_dtype = np.dtype(dtypes[name])
        if arr.dtype != want_dtype:
            raise OneByOneError(f"{p}: array {name!r} is {arr.dtype}, the model input is {want_dtype} (convert it, e.g. "
                                f"arr.astype(np.{want_dtype.name}); onebyone does not cast inputs silently)")
        want = tuple(input_shapes[name])
        if want and want[0] == 1 and arr.ndim == len(want) and tuple(arr.shape[1:]) == want[1:]:
            arrays[name] = arr[:, None]  # K samples stacked along a batch axis of 1: a batch of K
        elif tuple(arr.shape[1:]) != want:
            stacked = f" or [K, {', '.join(map(str, want[1:]))}]" if want and want[0] == 1 else ""
            raise OneByOneError(
                f"{p}: array {name!r} has shape {list(arr.shape)}, expected [K, {', '.join(map(str, want))}]{stacked}"
            )
        counts.add(arr.shape[0])
    if len(counts) != 1 or 0 in counts:
        raise OneByOneError(f"{p}: arrays must hold the same number K >= 1 of samples, got {sorted(counts)}")
    k = counts.pop()
    return [{n: np.asarray(arrays[n][i]) for n in arrays} for i in range(k)]


@dataclasses.dataclass(frozen=True)
class ImagePreprocess:
    """How a photo becomes a model input: resize to (height, width), gray (`channels` 1) or color with optional BGR
    order, then (pixel * scale - mean) / std per channel (a single mean or std serves every channel), laid out NCHW
    or NHWC with a batch of 1, as `dtype`: a float type, or uint8 for models that take raw pixels (no scaling)."""

    height: int
    width: int
    layout: str = "NCHW"
    bgr: bool = False
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    channels: int = 3
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.layout not in ("NCHW", "NHWC"):
            raise OneByOneError(f"image layout must be NCHW or NHWC, got {self.layout!r}")
        if self.channels not in (1, 3):
            raise OneByOneError(f"images have 1 (gray) or 3 (color) channels, not {self.channels}")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, self.channels):
                raise OneByOneError(f"image {name} {list(values)}: expected 1 or {self.channels} values")
        if not (np.issubdtype(np.dtype(self.dtype), np.floating) or np.dtype(self.dtype) == np.uint8):
            raise OneByOneError(f"images feed float or uint8 inputs, not {self.dtype}")

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """An HxWx3 uint8 RGB image -> [1, C, H, W] (or [1, H, W, C]) of `dtype`."""
        from PIL import Image

        img = Image.fromarray(rgb).convert("L" if self.channels == 1 else "RGB")
        x = np.asarray(img.resize((self.width, self.height), Image.Resampling.BILINEAR), dtype=np.float32)
        x = x.reshape(x.shape[0], x.shape[1], self.channels)
        if self.bgr and self.channels == 3:
            x = x[..., ::-1]
        if np.dtype(self.dtype) != np.uint8:
            x = (x * self.scale - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        x = x[None]
        if self.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x, dtype=self.dtype)


def load_rgb(path: str | Path) -> np.ndarray:
    """An image file as HxWx3 uint8 RGB."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise OneByOneError(f"{path}: not a readable image ({exc})") from None


def image_samples(images: list[np.ndarray], input_name: str, prep: ImagePreprocess, batch: int = 1) -> Samples:
    """One sample per RGB image, fed to `input_name`; for an input of static batch `batch` > 1 (a model exported at a
    fixed batch size), one sample per `batch` images stacked in order, the last one filled up from the first images
    again (ceil(images / batch) samples)."""
    xs = [prep.apply(img) for img in images]
    if batch <= 1:
        return [{input_name: x} for x in xs]
    return [{input_name: np.concatenate([xs[(k * batch + j) % len(xs)] for j in range(batch)])}
            for k in range(-(-len(xs) // batch))]


def folder_images(folder: str | Path) -> list[np.ndarray]:
    """Every image file in `folder` (sorted by name) as RGB arrays."""
    p = Path(folder)
    if not p.is_dir():
        raise OneByOneError(f"{p}: no such image folder")
    files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise OneByOneError(f"{p}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder")
    return [load_rgb(f) for f in files]
