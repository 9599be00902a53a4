"""The PP-OCR detector's task, end to end: text boxes from its DB probability map, each read by the bundled
PP-OCRv4 recognizer (ch_PP-OCRv4_rec, CTC), so that a rewritten detector is judged by the strings it yields."""

from __future__ import annotations

import functools
import math

import numpy as np

DB_THRESHOLD = 0.3  # pixels of the probability map above this are text
MIN_BOX_AREA = 16  # connected components smaller than this (pixels) are noise
UNCLIP_RATIO = 1.5  # DB shrinks text regions in training; boxes grow back by area * ratio / perimeter
REC_HEIGHT, REC_MAX_WIDTH = 48, 640
REC_MODEL = "models/ch_PP-OCRv4_rec_infer.onnx"  # also bundled on its own: onebyone.models.real "ppocr-rec"

Box = tuple[int, int, int, int]  # y0, x0, y1, x1 (exclusive), in detector-input pixels


def boxes(prob: np.ndarray) -> list[Box]:
    """Axis-aligned text boxes of a [H, W] DB probability map: connected components above DB_THRESHOLD,
    grown back by the DB unclip distance, clipped to the map. Sorted top to bottom, left to right."""
    from skimage.measure import label, regionprops

    h, w = prob.shape
    out = []
    for region in regionprops(label(prob > DB_THRESHOLD)):
        if region.area < MIN_BOX_AREA:
            continue
        y0, x0, y1, x1 = region.bbox
        grow = region.area * UNCLIP_RATIO / max(2 * ((y1 - y0) + (x1 - x0)), 1)
        g = int(math.ceil(grow))
        out.append((max(0, y0 - g), max(0, x0 - g), min(h, y1 + g), min(w, x1 + g)))
    return sorted(out)


def iou(a: Box, b: Box) -> float:
    y0, x0, y1, x1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, y1 - y0) * max(0, x1 - x0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 1.0


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


class Recognizer:
    """The bundled PP-OCRv4 text recognizer in onnxruntime; `read` turns a box of an image into a string."""

    def __init__(self) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(rec_model_path()), providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def read(self, bgr: np.ndarray, box: Box) -> str:
        """The text in `box` of an HxWx3 float BGR image with values in [0, 1]."""
        from PIL import Image

        y0, x0, y1, x1 = box
        crop = np.clip(bgr[y0:y1, x0:x1] * 255, 0, 255).astype(np.uint8)
        width = int(min(REC_MAX_WIDTH, max(REC_HEIGHT // 4, math.ceil(REC_HEIGHT * crop.shape[1] / max(crop.shape[0], 1)))))
        img = np.asarray(Image.fromarray(crop).resize((width, REC_HEIGHT), Image.Resampling.BILINEAR), np.float32)
        x = ((img / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)[None]
        (probs,) = self.session.run(None, {self.input: np.ascontiguousarray(x)})
        return decode(probs[0])


def rec_model_path():
    """The recognizer's file, shipped in the detector's wheel."""
    from onebyone.models.real import real_model

    return real_model("ppocr-det").path().parent.parent / REC_MODEL


@functools.lru_cache(maxsize=1)
def characters() -> tuple[str, ...]:
    """The recognizer's classes: CTC blank, the dictionary stored in the model's metadata, space."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(rec_model_path()), load_external_data=False).metadata_props}
    return ("<blank>", *meta["character"].splitlines(), " ")


def decode(probs: np.ndarray) -> str:
    """The string of a recognizer output [T, classes] (CTC greedy: best class per step, repeats and blanks
    dropped)."""
    chars = characters()
    ids = probs.argmax(-1)
    keep = [int(i) for k, i in enumerate(ids) if i != 0 and (k == 0 or i != ids[k - 1])]
    return "".join(chars[i] for i in keep if i < len(chars)).strip()


def read_lines(outputs: list[np.ndarray]) -> list[str]:
    """The strings of recognizer outputs [1, T, classes] (of the original model or a rewritten one)."""
    return [decode(o[0]) for o in outputs]


@functools.lru_cache(maxsize=1)
def recognizer() -> Recognizer:
    return Recognizer()


def detector_image(x: np.ndarray) -> np.ndarray:
    """The detector's [1, 3, H, W] input back to an HxWx3 BGR image in [0, 1] (undoing PPOCR_PREP)."""
    from onebyone.models.real import PPOCR_PREP

    img = x[0].transpose(1, 2, 0) * np.asarray(PPOCR_PREP.std, np.float32) + np.asarray(PPOCR_PREP.mean, np.float32)
    return np.clip(img / PPOCR_PREP.scale / 255.0, 0.0, 1.0)


def read_all(x: np.ndarray, prob: np.ndarray) -> list[tuple[Box, str]]:
    """(box, string) for every text box that the detector's probability map `prob` [1, 1, H, W] finds in `x`."""
    img = detector_image(x)
    rec = recognizer()
    return [(b, rec.read(img, b)) for b in boxes(prob[0, 0])]


def compare(inputs: list[np.ndarray], ref: list[np.ndarray], got: list[np.ndarray]) -> dict:
    """OCR outcome of a rewritten detector (`got` maps) against the original (`ref` maps) on the same inputs:
    each original box is matched to the optimized box of highest IoU; reported are the worst IoU, the box counts,
    how many strings are identical, and the summed edit distance (a missing box counts its whole string)."""
    worst, n_ref, n_got, same, dist, strings = 1.0, 0, 0, 0, 0, []
    for x, r, g in zip(inputs, ref, got):
        a, b = read_all(x, r), read_all(x, g)
        n_ref += len(a)
        n_got += len(b)
        for box, text in a:
            match = max(b, key=lambda bt: iou(box, bt[0]), default=None)
            overlap = iou(box, match[0]) if match else 0.0
            worst = min(worst, overlap)
            other = match[1] if match and overlap > 0 else ""
            same += text == other
            dist += edit_distance(text, other)
            strings.append(text)
        if b and not a:
            worst = 0.0
    return {"min_box_iou": worst, "boxes": [n_ref, n_got], "strings": n_ref, "identical_strings": same,
            "edit_distance": dist, "unchanged": bool(worst >= 0.95 and n_ref == n_got and same == n_ref),
            "texts": strings}
