"""Task outcomes of the bundled real models: whether an optimized model still does what the original does on the
evaluation inputs (the criteria every benchmark judges by). Each returns a dict whose `unchanged` is the verdict."""

from __future__ import annotations

import numpy as np

from onebyone.models import ocr
from onebyone.verify.logits import logits_of, softmax_input, stacked, top_margins_rel_l2, values
from onebyone.verify.metrics import rel_l2


def classifier(inputs: list, ref: dict, got: dict) -> dict:
    """open_nsfw: largest change of a class probability, and top-1 agreement, over the evaluation photos;
    unchanged when no probability moves more than 0.01 and top-1 never changes."""
    (name,) = ref
    r, g = np.concatenate(ref[name]), np.concatenate(got[name])
    return {"max_prob_change": float(np.abs(r - g).max()), "top1": float(np.mean(r.argmax(1) == g.argmax(1))),
            "unchanged": bool(np.abs(r - g).max() <= 0.01 and np.all(r.argmax(1) == g.argmax(1)))}


def detector(inputs: list, ref: dict, got: dict) -> dict:
    """PP-OCR det, end to end on photos with printed text: boxes of the original matched to the optimized
    model's, each read by the PP-OCRv4 recognizer; worst IoU, box counts, identical strings, edit distance
    (unchanged: same boxes with IoU >= 0.95 and every string identical)."""
    (name,) = ref
    result = ocr.compare([s["x"] for s in inputs], ref[name], got[name])
    result.pop("texts")
    return result


def recognizer(inputs: list, ref: dict, got: dict) -> dict:
    """PP-OCR rec on printed text lines: the strings read (CTC greedy) by the original and the optimized model
    (unchanged: every string identical); summed edit distance."""
    (name,) = ref
    a, b = ocr.read_lines(ref[name]), ocr.read_lines(got[name])
    return {"strings": len(a), "identical_strings": sum(x == y for x, y in zip(a, b)),
            "edit_distance": sum(ocr.edit_distance(x, y) for x, y in zip(a, b)), "unchanged": a == b}


def audio(inputs: list, ref: dict, got: dict) -> dict:
    """basic-pitch: agreement of the note activation map thresholded at 0.5, and the strongest note per tone
    (unchanged: same notes and >= 99.9% of the cells agree)."""
    key = "StatefulPartitionedCall:2"
    r, g = np.concatenate(ref[key]), np.concatenate(got[key])
    agree = float(np.mean((r > 0.5) == (g > 0.5)))
    same_note = bool(np.all(r.mean(1).argmax(-1) == g.mean(1).argmax(-1)))
    return {"note_cell_agreement": agree, "same_notes": same_note, "unchanged": bool(same_note and agree >= 0.999)}


METRICS = {"classifier": classifier, "detector": detector, "recognizer": recognizer, "audio": audio}


def outcome(task: str, inputs: list, ref: dict, got: dict, models: tuple | None = None) -> dict:
    """The task outcome (`unchanged` and the numbers behind it) of outputs `got` against `ref` on `inputs`; with
    `models` (original, optimized) a classifier's outcome also has its logits' changes (see logit_changes), which do
    not enter the verdict."""
    result = METRICS[task](inputs, ref, got)
    if task == "classifier" and models is not None:
        result.update(logit_changes(*models, inputs) or {})
    return result


def logit_changes(original, optimized, inputs: list) -> dict | None:
    """How far the optimized model moves a Softmax classifier's logits z on `inputs` (None when the model's output
    is not a Softmax): `logit_rel_error` (relative L2 over all inputs), `margin_rel_error` (the same over the
    margins among each row's top classes, verify.logits.top_margins_rel_l2: what the tool's gains and checks
    compare; a shift of a whole row counts nothing), `max_logodds_change` (the largest change of any log-odds
    z_i - z_j, i.e. of log(p_i/p_j)) and `min_margin` (the original's smallest top-1 log-odds margin over the
    inputs). A probability near 1 hides a log-odds change: an input with margin 6 (p = 0.998) moved by 1 towards the
    boundary loses 0.004 of p, an input on the decision boundary moved by 1 goes from p = 0.5 to 0.73."""
    names = logits_of(original), logits_of(optimized)  # an INT8 model may have renamed its values
    if None in names:
        return None
    rs, gs = (values(m, n, inputs, label)
              for m, n, label in zip((original, optimized), names, ("original", "optimized")))
    r, g = stacked(rs), stacked(gs)
    d = g - r
    top2 = np.sort(r, axis=1)[:, -2:] if r.shape[1] > 1 else np.zeros((len(r), 2))
    return {"logit_rel_error": rel_l2(r, g),
            "margin_rel_error": top_margins_rel_l2(rs, gs, softmax_input(original)),
            "max_logodds_change": float((d.max(1) - d.min(1)).max()),
            "min_margin": float((top2[:, 1] - top2[:, 0]).min())}


def summary(t: dict) -> str:
    """One line: key=value for every entry of a task outcome."""
    return ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in t.items())
