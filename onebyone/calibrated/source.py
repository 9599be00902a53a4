"""The data-aware factor source: what the pass gets from calibration data.

Ranks come from the weight whitened by the input statistics (Q = Mᵀ E[xxᵀ]^½: its spectrum is the output energy per
rank); factors are fitted conv by conv in graph order against the original outputs with the inputs each conv sees in
the model rewritten so far; each rewritten conv's output error is then measured, and rewrites whose measured error is
far above the prediction are undone.
"""

from __future__ import annotations

import os

from onebyone.calibrated import fitting, moments, sensitivity, whitening
from onebyone.passes import plan, rewrite
from onebyone.passes.sources import Applied

LOSSLESS_ON_DATA_MAX_ERROR = 1e-4  # a conv called lossless on data must measure at float32 level
BACK_OFF_FACTOR, BACK_OFF_MARGIN = 3.0, 0.02  # measured > 3 x predicted + 0.02: undo the rewrite


class DataSource:
    """Factors fitted on calibration `samples` (feed dicts); statistics cached in `cache_dir` when given.

    A source serves one model: the channel moments and the output gains it measures on that model are kept and
    reused by later passes over the same model (a search over budgets computes them once)."""

    method = "data"

    def __init__(self, samples: list[dict], cache_dir: str | os.PathLike | None = None) -> None:
        if not samples:
            raise ValueError("the data-aware method needs calibration samples")
        self.samples = samples
        self.cache_dir = cache_dir
        self.original = None
        self.moments: dict = {}
        self.info: dict | None = None
        self._progress = None
        self._gains: dict[int, dict] = {}

    def _tick(self, stage: str):
        return (lambda done, total: self._progress(stage, done, total)) if self._progress else None

    def prepare(self, model, candidates, progress=None) -> None:
        self._progress = progress
        self.original = model.clone()
        names = sorted({i.node.inputs[0].name for i in candidates})
        if self.info is not None and set(names) <= set(self.moments):
            self.info = {**self.info, "from_cache": True}
            return
        self.moments, cached = moments.collect_cached(model, self.samples, names, self.cache_dir, self._tick("calibrating"))
        self.info = {"samples": len(self.samples), "convs": len(names), "from_cache": cached}

    def statistics(self, info):
        m = self.moments.get(info.node.inputs[0].name)
        if m is None:
            return None, None
        return whitening.spectrum(info.weight, info.groups, m.second_moment), m

    def gains(self, model, decisions, round_to, progress=None):
        if round_to not in self._gains:
            self._gains[round_to] = sensitivity.output_gains(model, decisions, self.samples, round_to,
                                                             self._tick("sensitivity"))
        return self._gains[round_to]

    def factors(self, d, model, rewritten_so_far):
        stats, held, paired = fitting.patch_moments(self.original, model if rewritten_so_far else None, self.samples, d)
        return fitting.fit(d, paired, stats, held)

    def settle(self, model, applied: list[Applied]) -> None:
        """Measure each rewritten conv's output error on the calibration data; a conv called lossless on data that
        does not measure at float level is relabelled approximate; rewrites whose error is far above the prediction
        (the prediction ignores padding and correlations between kernel taps) are undone."""
        if not applied:
            return
        outs = [a.decision.info.node.outputs[0].name for a in applied]
        measured = fitting.measure(self.original, model, self.samples, outs)
        for a, name in zip(applied, outs):
            d, err = a.decision, measured[name]
            d.measured_error = err
            predicted = d.predicted_error or 0.0
            if d.lossless and err > LOSSLESS_ON_DATA_MAX_ERROR:
                d.lossless = False
                d.lossless_on = None
                d.reason = f"approximate: rank {d.rank} (measured error {err:.2g} is not float-level)"
            if err > BACK_OFF_FACTOR * predicted + BACK_OFF_MARGIN:
                rewrite.remove_bottleneck(model.graph, d.info.node, a.old_inputs, a.squeeze)
                plan.reject(d, f"backed off: measured error {err:.3g} far above the predicted {predicted:.3g}",
                            asked_rank=d.rank)

    def describe(self):
        return self.info
