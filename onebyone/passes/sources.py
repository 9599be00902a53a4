"""Factor sources: where the pass gets each conv's spectrum and factors from. The pass calls one interface; the
weight-only source lives here, the data-aware one (which runs the model on calibration data) in onebyone.calibrated.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import numpy as np
import onnx_ir as ir

from onebyone.passes import factorize, rewrite
from onebyone.passes.analysis import ConvInfo
from onebyone.passes.plan import Decision


@dataclasses.dataclass
class Applied:
    """One rewrite the pass made: its decision and what rewrite.remove needs to undo it."""

    decision: Decision
    inserted: rewrite.Inserted

    @property
    def old_inputs(self) -> list:
        """The conv's inputs before the rewrite."""
        return self.inserted.old_inputs


class FactorSource(Protocol):
    """What the pass asks of a factorization method, in this order:
    prepare (once, on the model before any rewrite) -> statistics (per candidate conv) -> gains (global budgets)
    -> factors (per chosen conv, in graph order, on the model rewritten so far) -> settle (after all rewrites)."""

    method: str  # "weight" | "data": recorded in the report

    def prepare(self, model: ir.Model, candidates: list[ConvInfo], progress=None) -> None:
        """Look at the model before any rewrite; `progress(stage, done, total)` reports long work."""

    def statistics(self, info: ConvInfo) -> tuple[tuple[list[np.ndarray], list[float]] | None, Any]:
        """(spectrum, statistics) of one candidate conv: the per-group singular values and energies that its ranks
        are read from (None: the weight's own) and the statistics they came from (None without data)."""

    def gains(self, model: ir.Model, decisions: list[Decision], round_to: int, progress=None) -> dict | None:
        """Per conv, how strongly its error reaches the model's outputs, per rank (None: not measured)."""

    def factors(self, d: Decision, model: ir.Model, rewritten_so_far: bool) -> tuple[factorize.Factors, str | None]:
        """The factors of one chosen conv and the name of the fit that produced them (None: plain SVD)."""

    def settle(self, model: ir.Model, applied: list[Applied]) -> None:
        """After every rewrite: measure and undo what does not hold up (may change `model` and the decisions)."""

    def describe(self) -> dict[str, Any] | None:
        """What the report records about the source (calibration samples, cache), or None."""


class WeightSource:
    """Weight-only factorization: truncated SVD of the unfolded weight (optimal in the Frobenius norm). Factors of a
    weight shared by several convs are computed once per rank."""

    method = "weight"

    def __init__(self) -> None:
        self._svd: dict[tuple, factorize.Factors] = {}

    def prepare(self, model, candidates, progress=None) -> None:
        self._svd.clear()

    def statistics(self, info):
        return None, None

    def gains(self, model, decisions, round_to, progress=None):
        return None

    def factors(self, d, model, rewritten_so_far):
        # matrix ops read a shared weight each in their own orientation and scale (transB, alpha): factored per node
        owner = id(d.info.node) if d.info.matrix is not None else None
        key = (id(d.info.node.inputs[1]), d.form, d.rank, owner)
        if key not in self._svd:
            self._svd[key] = factorize.svd_factors(d.info.weight, d.info.groups, d.rank, d.form)
        return self._svd[key], None

    def settle(self, model, applied) -> None:
        return None

    def describe(self):
        return None
