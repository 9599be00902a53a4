"""The logits behind a Softmax output: probabilities near 0 or 1 hide how far a rewrite moved them (a log-odds
margin of 6 moved by 1 towards the decision boundary changes p by 0.004; the same move at the boundary by 0.23)."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from onebyone.verify.decisions import decided_from
from onebyone.verify.metrics import sample_sums, whole_error
from onebyone.verify.onnxruntime_run import Probe

UNDERSTATED = 2.0  # the note is written when the logits moved this many times more than the probabilities
MIN_LOGIT_ERROR = 1e-4  # ... and at least this much (float32 noise of a lossless rewrite is below it)
TOP_CLASSES = 5  # top_margins_rel_l2 compares each row's this many most likely classes


def _softmax_node(model, direct: bool = False) -> ir.Node | None:
    """The Softmax a model's single output is, or (unless `direct`) is decided from (ArgMax(Softmax(z)), a label
    taken from the probabilities: verify.decisions); None when there is none."""
    outputs = list(model.graph.outputs)
    if len(outputs) != 1:
        return None
    value = outputs[0] if direct else (decided_from(outputs[0]) or outputs[0])
    producer = value.producer()
    if producer is None or producer.op_type != "Softmax" or producer.domain not in ("", "ai.onnx"):
        return None
    return producer


def logits_of(model, direct: bool = False) -> str | None:
    """The name of the value a model's single output is the Softmax of, or (unless `direct`) is decided from the
    Softmax of (None when there is none)."""
    node = _softmax_node(model, direct)
    return node.inputs[0].name if node is not None else None


@dataclasses.dataclass(frozen=True)
class SoftmaxInput:
    """The value `name` a model's single output is the Softmax of, and where its classes lie: along `axis`, or (opset
    below 13, `flattened`) along every axis from `axis` on."""

    name: str
    axis: int
    flattened: bool

    def rows(self, array: np.ndarray) -> np.ndarray:
        """A value of `name` as [rows, classes]: one row per distribution the Softmax normalises."""
        axis = self.axis % array.ndim
        if self.flattened:
            return array.reshape(int(np.prod(array.shape[:axis], dtype=np.int64)), -1)
        return np.moveaxis(array, axis, -1).reshape(-1, array.shape[axis])


def softmax_input(model: ir.Model) -> SoftmaxInput | None:
    """The Softmax behind a model's single output: the output itself, or the probabilities a decision of it is
    taken from (ArgMax(Softmax(z)), verify.decisions); None when there is none."""
    node = _softmax_node(model)
    if node is None:
        return None
    name = node.inputs[0].name
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 13))
    return SoftmaxInput(name, node.attributes.get_int("axis", 1 if opset < 13 else -1), opset < 13)


def top_margins_rel_l2(ref: list[np.ndarray], got: list[np.ndarray], softmax: SoftmaxInput,
                       k: int = TOP_CLASSES) -> float:
    """How far the competition among the classes that matter moved: relative L2, over all samples (one array of
    `softmax.name` each), between the reference's and the candidate's logits at each row's `k` most likely classes
    by the reference, each row centred on its mean there (a Softmax ignores a row's shift). With two classes, the
    relative error of the margins. Unlike the probabilities it does not shrink on confident rows; unlike all the
    logits it is not swamped by thousands of classes no input is near (a CTC head's 6,625 characters)."""
    return whole_error(top_margins_sums(ref, got, softmax, k))


def top_margins_sums(ref: list[np.ndarray], got: list[np.ndarray], softmax: SoftmaxInput,
                     k: int = TOP_CLASSES) -> list[np.ndarray]:
    """What top_margins_rel_l2 measures, as per-sample sums (one part: verify.metrics.part_sums)."""
    refs, gots = [], []
    for r, g in zip(ref, got):
        r, g = softmax.rows(np.asarray(r, np.float64)), softmax.rows(np.asarray(g, np.float64))
        top = np.argsort(-r, axis=1, kind="stable")[:, :min(k, r.shape[1])]
        r, g = np.take_along_axis(r, top, 1), np.take_along_axis(g, top, 1)
        refs.append(r - r.mean(1, keepdims=True))
        gots.append(g - g.mean(1, keepdims=True))
    return [sample_sums(refs, gots)]


def stacked(arrays: list[np.ndarray]) -> np.ndarray:
    """Per-sample logits as one [items, classes] array (one row per item of each sample's batch)."""
    return np.concatenate([v.reshape(len(v), -1) for v in arrays])


def values(model, name: str, samples: list[dict], label: str) -> list[np.ndarray]:
    """The value `name` of `model` on every sample, one array per sample (only that value is computed)."""
    return Probe(model, [name], label, only=True).by_name(samples)[name]


def softmax_logits(reference, candidate) -> tuple[str, str] | None:
    """The names of the values both models' single output is the Softmax of, or None (either is not one, or is not
    an ir.Model)."""
    if not (isinstance(reference, ir.Model) and isinstance(candidate, ir.Model)):
        return None
    names = logits_of(reference, direct=True), logits_of(candidate, direct=True)
    return None if None in names else names


def understated_note(output: str, softmax: SoftmaxInput, ref: list[np.ndarray], got: list[np.ndarray],
                     output_rel_l2: float) -> str | None:
    """A note for the verification of a Softmax `output` whose logits (`softmax`; ref and got, one array per sample)
    moved, by top_margins_rel_l2 (the margins among each row's top classes, what a Softmax's decisions read), more
    than UNDERSTATED times the probabilities' relative L2 (`output_rel_l2`): what they moved by, and what to check.
    None otherwise."""
    error = top_margins_rel_l2(ref, got, softmax)
    if error < MIN_LOGIT_ERROR or error <= UNDERSTATED * output_rel_l2:
        return None
    classes = min(TOP_CLASSES, softmax.rows(np.asarray(ref[0])).shape[1])
    return (f"{output} is the Softmax of {softmax.name}, whose logits' margins among each row's top {classes} "
            f"classes moved by rel L2 {error:.3g} (the probabilities by {output_rel_l2:.3g}): probabilities near 0 or "
            "1 hide logit changes, so check inputs near the decision threshold you deploy")
