"""Verification: run two models on the same samples with onnxruntime and check explicit tolerances."""

from __future__ import annotations

import dataclasses
from typing import Any

from onebyone.verify.metrics import OutputMetrics, compare_output
from onebyone.verify.onnxruntime_run import run_samples, session
from onebyone.verify.tolerances import Tolerances


@dataclasses.dataclass
class Verification:
    """The result of comparing a candidate model against a reference on `samples` inputs."""

    reference: str
    candidate: str
    inputs: str
    samples: int
    tolerances: Tolerances
    outputs: list[OutputMetrics]
    failures: list[str]

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["passed"] = self.passed
        return d


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
    """Run both models (ir.Model or path) on `samples` and measure every output of the reference.

    The candidate must produce the reference's outputs by name; a missing output is a failure.
    """
    ref_out = run_samples(session(reference, reference_label), samples, reference_label)
    cand_out = run_samples(session(candidate, candidate_label), samples, candidate_label)
    return compare_outputs(ref_out, cand_out, tolerances, reference_label, candidate_label, inputs_label)


def compare_outputs(
    ref_out: dict[str, list], cand_out: dict[str, list], tolerances: Tolerances,
    reference_label: str, candidate_label: str, inputs_label: str,
) -> Verification:
    """Metrics and tolerance failures of every reference output (per-sample lists, by name) against the
    candidate's outputs of the same name; a missing output is a failure."""
    metrics, failures = [], []
    for name, refs in ref_out.items():
        if name not in cand_out:
            failures.append(f"{name}: output missing from {candidate_label}")
            continue
        m = compare_output(name, refs, cand_out[name], tolerances.atol)
        metrics.append(m)
        failures.extend(tolerances.failures(m))
    n = len(next(iter(ref_out.values()), []))
    return Verification(reference_label, candidate_label, inputs_label, n, tolerances, metrics, failures)
