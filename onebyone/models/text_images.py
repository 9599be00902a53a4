"""Photos with printed text on them, for the OCR detector: real backgrounds, real fonts (matplotlib's DejaVu), words
and layouts drawn from a seed. Evaluation and calibration use different photos, fonts and seeds."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from onebyone.errors import OneByOneError

WORDS = (
    "OPEN", "EXIT", "STOP", "SALE", "HOTEL", "PARKING", "COFFEE", "Station", "Market", "Street", "Garden", "River",
    "North", "South", "Library", "Museum", "Bakery", "Pharmacy", "Welcome", "Tickets", "Platform", "Gate", "Floor",
    "Room", "Office", "Bridge", "Harbor", "Airport", "Taxi", "Bus", "Metro", "Avenue", "Central", "Park", "Lake",
    "Hill", "Tower", "School", "Clinic", "Bank", "Post", "Cinema", "Theatre", "Kitchen", "Menu", "Price", "Total",
    "Open", "Daily", "Fresh", "Bread", "Tea", "Juice", "Water", "Fruit", "Books", "Music", "Sport", "Photo", "Print",
)
EVALUATION_FONTS = ("DejaVuSerif.ttf", "DejaVuSans-Bold.ttf")
CALIBRATION_FONTS = ("DejaVuSans.ttf", "DejaVuSansMono.ttf", "DejaVuSerif-Bold.ttf")


def font_path(name: str) -> Path:
    """A TrueType font shipped with matplotlib."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        raise OneByOneError("matplotlib is not installed; it carries the fonts used for text images")
    path = Path(spec.submodule_search_locations[0]) / "mpl-data" / "fonts" / "ttf" / name
    if not path.is_file():
        raise OneByOneError(f"font {name} not found in {path.parent}")
    return path


def phrase(rng: np.random.Generator) -> str:
    """One to three words, sometimes followed by a number (e.g. 'Central Park 24')."""
    words = [str(w) for w in rng.choice(WORDS, size=int(rng.integers(1, 4)), replace=False)]
    if rng.random() < 0.4:
        words.append(str(int(rng.integers(1, 999))))
    return " ".join(words)


def with_text(image: np.ndarray, seed: int, fonts: tuple[str, ...], lines: int = 4) -> np.ndarray:
    """A copy of the HxWx3 uint8 RGB `image` with `lines` phrases printed at random places: dark or light text,
    on a plain band half of the time (like signs and labels), font height 1/16 to 1/9 of the image height."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    img = Image.fromarray(image).convert("RGB")
    draw = ImageDraw.Draw(img)
    h, w = image.shape[:2]
    placed: list[tuple[int, int, int, int]] = []
    for _ in range(lines):
        size = max(8, int(h * rng.uniform(1 / 16, 1 / 9)))
        font = ImageFont.truetype(str(font_path(str(rng.choice(fonts)))), size)
        text = phrase(rng)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        pad = size // 4
        spot = None
        for _ in range(30):  # phrases never overlap each other
            if tw + 2 * pad >= w or th + 2 * pad >= h:
                break
            x = int(rng.integers(pad, w - tw - pad))
            y = int(rng.integers(pad, h - th - pad))
            box = (x - 2 * pad, y - 2 * pad, x + tw + 2 * pad, y + th + 2 * pad)
            if all(box[2] < o[0] or o[2] < box[0] or box[3] < o[1] or o[3] < box[1] for o in placed):
                spot = (x, y)
                placed.append(box)
                break
        if spot is None:
            continue
        x, y = spot
        dark = rng.random() < 0.5
        ink = tuple(int(v) for v in (rng.integers(0, 60, 3) if dark else rng.integers(200, 256, 3)))
        if rng.random() < 0.5:
            paper = tuple(int(v) for v in (rng.integers(200, 256, 3) if dark else rng.integers(0, 60, 3)))
            draw.rectangle((x - pad, y - pad, x + tw + pad, y + th + pad), fill=paper)
        draw.text((x - left, y - top), text, font=font, fill=ink)
    return np.asarray(img)


def text_line(image: np.ndarray, seed: int, fonts: tuple[str, ...], height: int = 48, width: int = 320) -> tuple[np.ndarray, str]:
    """(a height x width RGB text-line image, its phrase): a strip of the photo `image` as background, one phrase
    printed across it (dark or light ink, on a plain band half of the time), the font shrunk until the phrase fits:
    what a text recognizer gets from a detector's box."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    strip_h = max(8, int(h * rng.uniform(0.1, 0.3)))
    y = int(rng.integers(0, h - strip_h + 1))
    img = Image.fromarray(image[y:y + strip_h]).convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(img)
    text = phrase(rng)
    name = str(rng.choice(fonts))
    size = int(height * rng.uniform(0.55, 0.75))
    while True:
        font = ImageFont.truetype(str(font_path(name)), size)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        if right - left <= width - 8 or size <= 10:
            break
        size -= 2
    tw, th = right - left, bottom - top
    x = int(rng.integers(2, max(3, width - tw - 2)))
    y0 = max(0, (height - th) // 2 + int(rng.integers(-2, 3)))
    dark = rng.random() < 0.5
    ink = tuple(int(v) for v in (rng.integers(0, 60, 3) if dark else rng.integers(200, 256, 3)))
    if rng.random() < 0.5:
        paper = tuple(int(v) for v in (rng.integers(200, 256, 3) if dark else rng.integers(0, 60, 3)))
        draw.rectangle((max(0, x - 4), max(0, y0 - 4), min(width, x + tw + 4), min(height, y0 + th + 4)), fill=paper)
    draw.text((x - left, y0 - top), text, font=font, fill=ink)
    return np.asarray(img), text
