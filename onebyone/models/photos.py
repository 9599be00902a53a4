"""Real photos that ship inside the scikit-image wheel (no download), for calibration and verification."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from onebyone.errors import OneByOneError
from onebyone.verify.inputs import load_rgb

# Two disjoint sets: calibration uses CALIBRATION, verification and benchmarks use EVALUATION. Colour photos come
# first in CALIBRATION: grey photos alone would make the RGB input look one-dimensional to a data-aware fit.
EVALUATION = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg")
CALIBRATION = (
    "mpl:grace_hopper.jpg", "mpl:Minduka_Present_Blue_Pack.png", "ihc.png", "retina.jpg", "color.png",
    "camera.png", "page.png", "text.png",
)
TEXT = ("page.png", "text.png")


def skimage_data_dir() -> Path:
    """The folder of photos inside the installed scikit-image package."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise OneByOneError("scikit-image is not installed; it carries the bundled photos (pip install scikit-image)")
    return Path(spec.submodule_search_locations[0]) / "data"


def matplotlib_data_dir() -> Path:
    """matplotlib's sample data folder (grace_hopper.jpg and a few other photos)."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        raise OneByOneError("matplotlib is not installed; it carries some bundled photos")
    return Path(spec.submodule_search_locations[0]) / "mpl-data" / "sample_data"


def photo(name: str) -> np.ndarray:
    """One bundled photo as HxWx3 uint8 RGB (grayscale photos are replicated to 3 channels). Names are files of
    scikit-image's data folder, or 'mpl:<file>' for matplotlib's sample data."""
    if name.startswith("mpl:"):
        path = matplotlib_data_dir() / name[4:]
    else:
        path = skimage_data_dir() / name
    if not path.is_file():
        raise OneByOneError(f"bundled photo {name!r} not found in {path.parent}")
    return load_rgb(path)


def photos(names: tuple[str, ...] = EVALUATION) -> list[np.ndarray]:
    """Several bundled photos, in order."""
    return [photo(n) for n in names]
