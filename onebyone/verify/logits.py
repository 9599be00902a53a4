"""The logits behind a Softmax output: probabilities near 0 or 1 hide how far a rewrite moved them (a log-odds
margin of 6 moved by 1 towards the decision boundary changes p by 0.004; the same move at the boundary by 0.23)."""

from __future__ import annotations

import numpy as np

from onebyone.verify.metrics import rel_l2
from onebyone.verify.onnxruntime_run import Probe

UNDERSTATED = 2.0  # the note is written when the logits moved this many times more than the probabilities
MIN_LOGIT_ERROR = 1e-4  # ... and at least this much (float32 noise of a lossless rewrite is below it)


def logits_of(model) -> str | None:
    """The name of the value a model's single output is the Softmax of (None when it is not one)."""
    outputs = list(model.graph.outputs)
    producer = outputs[0].producer() if len(outputs) == 1 else None
    if producer is None or producer.op_type != "Softmax" or producer.domain not in ("", "ai.onnx"):
        return None
    return producer.inputs[0].name


def logits(model, name: str, samples: list[dict], label: str) -> np.ndarray:
    """The value `name` of `model` on every sample, one row per sample item ([items, classes])."""
    rows = Probe(model, [name], label, only=True).by_name(samples)[name]
    return np.concatenate([v.reshape(len(v), -1) for v in rows])


def understated_note(reference, candidate, samples: list[dict], output_rel_l2: float) -> str | None:
    """A note for the verification when both models' single output is a Softmax and its logits moved by more than
    UNDERSTATED times the probabilities' relative L2 (`output_rel_l2`): what they moved by, and what to check. None
    otherwise."""
    names = logits_of(reference), logits_of(candidate)
    if None in names or not samples:
        return None
    error = rel_l2(logits(reference, names[0], samples, "original"), logits(candidate, names[1], samples, "optimized"))
    if error < MIN_LOGIT_ERROR or error <= UNDERSTATED * output_rel_l2:
        return None
    output = reference.graph.outputs[0].name
    return (f"{output} is the Softmax of {names[0]}, which moved by rel L2 {error:.3g} (the probabilities by "
            f"{output_rel_l2:.3g}): probabilities near 0 or 1 hide logit changes, so check inputs near the decision "
            "threshold you deploy")
