"""Verification: run two models on the same samples with onnxruntime and check explicit tolerances."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import onnx_ir as ir

from onebyone.verify.logits import softmax_input, softmax_logits, understated_note
from onebyone.verify.metrics import OutputMetrics, compare_output
from onebyone.verify.onnxruntime_run import Probe, run_samples
from onebyone.verify.parts import Split, output_splits
from onebyone.verify.tolerances import Tolerances, narrowest_float


@dataclasses.dataclass
class Verification:
    """The result of comparing a candidate model against a reference on `samples` inputs.

    `precision`: the narrowest float dtype the models compute in (tolerances are loosened to what it can meet);
    `notes`: what the reader should know about the strength of the check (parts below the noise floor)."""

    reference: str
    candidate: str
    inputs: str
    samples: int
    tolerances: Tolerances
    outputs: list[OutputMetrics]
    failures: list[str]
    precision: str = "float32"
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def message(self) -> str:
        """One line: PASS, or FAIL with every missed limit."""
        return "PASS" if self.passed else f"FAIL ({self.candidate} vs {self.reference}): " + "; ".join(self.failures)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["passed"] = self.passed
        return d


def model_precision(*models) -> str:
    """The narrowest float dtype among the models' outputs and constant float tensors ('float32' when unknown)."""
    names = set()
    for m in models:
        if not isinstance(m, ir.Model):
            continue
        for v in list(m.graph.outputs) + list(m.graph.initializers.values()):
            if v.dtype is not None:
                names.add(str(v.dtype.numpy()))  # numpy's names; ml_dtypes' for bfloat16
    return narrowest_float(names)


def verify_models(
    reference,
    candidate,
    samples: list[dict],
    tolerances: Tolerances,
    *,
    reference_label: str = "original (onnxruntime)",
    candidate_label: str = "optimized (onnxruntime)",
    inputs_label: str = "random",
) -> Verification:
    """Run both models (ir.Model or path) on `samples` and measure every output of the reference, part by part
    (the reference's Concat outputs are split, see verify.parts).

    The candidate must produce the reference's outputs by name; a missing output is a failure. When the single output
    is a Softmax whose logits moved much more than it (verify.logits), a note says so (the verdict is the outputs')."""
    pair = softmax_logits(reference, candidate)  # the logits come from the same runs as the outputs
    ref_out = run_samples(Probe(reference, [pair[0]], reference_label) if pair else reference, samples,
                          reference_label)
    cand_out = run_samples(Probe(candidate, [pair[1]], candidate_label) if pair else candidate, samples,
                           candidate_label)
    ref_logits, cand_logits = (ref_out.pop(pair[0]), cand_out.pop(pair[1])) if pair else (None, None)
    splits = output_splits(reference) if isinstance(reference, ir.Model) else {}
    result = compare_outputs(ref_out, cand_out, tolerances, reference_label, candidate_label, inputs_label, splits,
                             model_precision(reference, candidate))
    if pair and samples and len(result.outputs) == 1:
        note = understated_note(result.outputs[0].name, softmax_input(reference), ref_logits, cand_logits,
                                result.outputs[0].worst_rel_l2)
        result.notes.extend([note] if note else [])
    return result


def compare_outputs(
    ref_out: dict[str, list], cand_out: dict[str, list], tolerances: Tolerances,
    reference_label: str, candidate_label: str, inputs_label: str,
    splits: dict[str, Split] | None = None, precision: str = "float32",
) -> Verification:
    """Metrics and tolerance failures of every reference output (per-sample lists, by name) against the
    candidate's outputs of the same name, at the tolerances `tolerances.at_precision(precision)`; a missing or
    differently shaped output is a failure."""
    tol = tolerances.at_precision(precision)
    metrics, failures, notes = [], [], []
    for name, refs in ref_out.items():
        if name not in cand_out:
            failures.append(f"{name}: output missing from {candidate_label}")
            continue
        got = cand_out[name]
        if len(got) != len(refs) or any(np.shape(a) != np.shape(b) for a, b in zip(refs, got)):
            failures.append(f"{name}: shape {list(np.shape(got[0])) if got else []} from {candidate_label}, "
                            f"expected {list(np.shape(refs[0]))}")
            continue
        work = narrowest_float({precision, str(np.asarray(refs[0]).dtype)})
        out_tol = tol.at_precision(work)
        m = compare_output(name, refs, got, out_tol.floor(work), (splits or {}).get(name), out_tol.atol, out_tol.rtol)
        metrics.append(m)
        failures.extend(out_tol.failures(m))
        if m.below_floor:
            notes.append(f"{', '.join(m.below_floor)}: the reference is ~0 on these inputs (below the noise floor), "
                         "so only absolute errors were checked there; verify on real inputs")
    n = len(next(iter(ref_out.values()), []))
    return Verification(reference_label, candidate_label, inputs_label, n, tol, metrics, failures, precision, notes)
