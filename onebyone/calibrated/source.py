"""The data-aware factor source: what the pass gets from calibration data.

Ranks come from the weight whitened by the input statistics (Q = Mᵀ E[xxᵀ]^½: its spectrum is the output energy per
rank); factors are fitted conv by conv in graph order against the original outputs with the inputs each conv sees in
the model rewritten so far; each rewritten conv's output error is then measured, and rewrites whose measured error is
far above the prediction are undone.

The fit walks two streams (calibrated.stream) over the calibration samples in step, the original model and the model
rewritten so far, from one chosen conv to the next: the fitting costs about two forward passes however many convs
are rewritten, and the measured errors come from the same walk. The walk takes at most FIT_SAMPLES samples, spread
evenly over the calibration set outside its held-out part: its patch statistics are capped at
fitting.POSITIONS_PER_CONV positions per conv whatever the sample count, so more samples would add walking time, not
data; every sample serves the channel statistics (ranks, whitening), and the held-out part of all of them the
model-level check (whose reference outputs come from the moments pass).
"""

from __future__ import annotations

import os

import numpy as np

from onebyone.calibrated import (fitting, moments, output_fitting, sensitivity, spatial_fitting, tucker2_fitting,
                                 whitening)
from onebyone.calibrated.holdout import is_holdout_place
from onebyone.calibrated.stream import MEMORY_LIMIT, Stream
from onebyone.passes import plan, rewrite, svd_cache
from onebyone.passes.analysis import OUTPUT_SIDE
from onebyone.passes.sources import Applied

LOSSLESS_ON_DATA_MAX_ERROR = 1e-4  # a conv called lossless on data must measure at float32 level
BACK_OFF_FACTOR, BACK_OFF_MARGIN = 3.0, 0.02  # measured > 3 x predicted + 0.02: undo the rewrite
FIT_SAMPLES = 128  # calibration samples the fitting walk takes at most (see the module docstring)


def fit_samples(samples: list) -> list:
    """At most FIT_SAMPLES of `samples`, spread evenly from the first to the last (all of them when fewer); past
    FIT_SAMPLES, none of the model-level check's held-out samples (calibrated.holdout), so that check stays out of
    sample."""
    if len(samples) <= FIT_SAMPLES:
        return list(samples)
    pool = [i for i in range(len(samples)) if not is_holdout_place(i)]  # held out or not (HOLDOUT_MAX): never fitted
    picks = np.unique(np.linspace(0, len(pool) - 1, min(FIT_SAMPLES, len(pool))).round().astype(int))
    return [samples[pool[i]] for i in picks]


class DataSource:
    """Factors fitted on calibration `samples` (feed dicts); statistics cached in `cache_dir` when given.

    A source serves one model: the channel moments and the output gains it measures on that model are kept and
    reused by later passes over the same model (a search over budgets computes them once)."""

    method = "data"

    def __init__(self, samples: list[dict], cache_dir: str | os.PathLike | None = None) -> None:
        if not samples:
            raise ValueError("the data-aware method needs calibration samples")
        self.samples = samples
        self.fit_set = fit_samples(samples)  # what the fitting walk streams
        self.cache_dir = cache_dir
        self.original = None
        self.moments: dict = {}
        self.info: dict | None = None
        self._progress = None
        self._gains: dict[tuple, dict] = {}
        self._walk: _Walk | None = None
        self._twins: dict[int, object] = {}
        self._data_hash = None  # of the model and the samples, for the cache keys (hashed once per model)
        self.held_outputs: dict = {}  # the model's outputs on the held-out samples, from the moments pass
        self._spectra: dict = {}  # statistics' spectra per (moments, forms, groups, weight and bias)

    def _tick(self, stage: str):
        return (lambda done, total: self._progress(stage, done, total)) if self._progress else None

    def prepare(self, model, candidates, progress=None) -> None:
        self._progress = progress
        self.original = model.clone()
        self._twins = dict(zip(map(id, model.graph), self.original.graph))  # node of `model` -> its clone
        names = sorted({i.node.inputs[0].name for i in candidates}
                       | {i.node.outputs[0].name for i in candidates if set(OUTPUT_SIDE) & set(i.forms)})
        if self.info is not None and set(names) <= set(self.moments):
            self.info = {**self.info, "from_cache": True}
            return
        layouts = {i.node.inputs[0].name: i.matrix.input_first for i in candidates if i.matrix is not None}
        layouts |= {i.node.outputs[0].name: i.matrix.output_first for i in candidates if i.matrix is not None}
        self.moments, cached = moments.collect_cached(model, self.samples, names, self.cache_dir,
                                                      self._tick("calibrating"), self._hash(model), layouts,
                                                      self.held_outputs)
        self.info = {"samples": len(self.samples), "fit_samples": len(self.fit_set), "convs": len(names),
                     "from_cache": cached}

    def statistics(self, info):
        m = self.moments.get(info.node.inputs[0].name)
        if m is None:
            return None, None
        y = self.moments.get(info.node.outputs[0].name)
        # a search rewrites the model at many budgets: each conv's spectra are computed once per statistics and weight
        bias = fitting.bias_of(info)
        key = (id(m), id(y), tuple(info.forms), info.groups, svd_cache.digest(info.weight, bias))
        if key not in self._spectra:
            self._spectra[key] = (self._spectra_of(info, m, y, bias), m, y)  # m and y held: their ids stay theirs
        return self._spectra[key][0], m

    def _spectra_of(self, info, m, y, bias: np.ndarray) -> dict:
        spectra = {}
        if {"input", "pointwise", "tucker2"} & set(info.forms):  # Tucker-2 reads the input side's spectrum too
            whitened = whitening.spectrum(info.weight, info.groups, m.second_moment, m.count)
            spectra = {form: whitened for form in info.forms if form in ("input", "pointwise")}
            if "tucker2" in info.forms:
                spectra["input"] = whitened
        if "spatial" in info.forms:
            spectra["spatial"] = whitening.spatial_spectrum(info.weight, info.groups, m.second_moment, m.count)
        if set(OUTPUT_SIDE) & set(info.forms) and y is not None:
            spectra["output"] = whitening.output_spectrum(y.second_moment, y.mean, bias, info.groups, y.count)
        for svals, _ in spectra.values():
            for a in svals:
                a.setflags(write=False)  # shared by every rewrite that asks again
        return spectra

    def gains(self, model, decisions, round_to, progress=None):
        key = (round_to, tuple(d.form for d in decisions))  # probes are taken in each conv's form
        if key not in self._gains:
            notes: dict = {}
            self._gains[key], cached = sensitivity.output_gains_cached(
                model, decisions, self.samples, round_to, self.cache_dir, self._tick("sensitivity"), self._hash(model),
                notes)
            if self.info is not None:
                self.info = {**self.info, "gains_from_cache": cached, **notes}
        return self._gains[key]

    def factors(self, d, model, rewritten_so_far):
        if not rewritten_so_far or self._walk is None:  # a new pass: a new walk from the model's inputs
            self._close_walk()
            self._walk = _Walk(self.original, model, self.fit_set, lambda n: self._twins.get(id(n)))
        original_node = self._twins[id(d.info.node)]
        fit = {"output": output_fitting.fit, "spatial": spatial_fitting.fit, "tucker2": tucker2_fitting.fit}.get(
            d.form, fitting.fit)
        return fit(d, self._walk.data_at(d.info.node, original_node, d.info.matrix))

    def settle(self, model, applied: list[Applied]) -> None:
        """Measure each rewritten conv's output error on the calibration data; a conv called lossless on data that
        does not measure at float level is relabelled approximate; rewrites whose error is far above the prediction
        (the prediction ignores padding and correlations between kernel taps) are undone."""
        if not applied:
            self._close_walk()
            return
        try:
            measured = self._walk.finish(applied[-1].decision.info.node)
        finally:
            self._close_walk()
        for a in applied:
            d, err = a.decision, measured[a.decision.info.node.outputs[0].name]
            d.measured_error = err
            predicted = d.predicted_error or 0.0
            if d.lossless and err > LOSSLESS_ON_DATA_MAX_ERROR:
                d.lossless = False
                d.lossless_on = None
                d.reason = f"approximate: rank {d.rank} (measured error {err:.2g} is not float-level)"
            if err > BACK_OFF_FACTOR * predicted + BACK_OFF_MARGIN:
                rewrite.remove(model.graph, a.inserted)
                plan.reject(d, f"backed off: measured error {err:.3g} far above the predicted {predicted:.3g}",
                            asked_rank=d.rank)

    def describe(self):
        return self.info

    def _hash(self, model):
        """moments.data_hash of the model this source serves and its samples (None without a cache)."""
        if self._data_hash is None and self.cache_dir is not None:
            self._data_hash = moments.data_hash(model, self.samples)
        return self._data_hash

    def _close_walk(self) -> None:
        if self._walk is not None:
            self._walk.close()
            self._walk = None


class Mapped:
    """A sequence of arrays read through a function (a matrix op's arrays in conv layout), lazily."""

    def __init__(self, arrays, function) -> None:
        self.arrays, self.function = arrays, function

    def __getitem__(self, i: int) -> np.ndarray:
        return self.function(self.arrays[i])

    def __len__(self) -> int:
        return len(self.arrays)

    def __iter__(self):
        return (self.function(a) for a in self.arrays)


class _Walk:
    """The original model and the model being rewritten, streamed over the calibration samples in step, stopping at
    each conv to be fitted. Each fitted conv's output error is measured when the rewritten stream next runs it. Up to
    the first fitted conv the two models are the same: the rewritten stream starts there, from the original's
    frontier (`counterpart`: a node of `model` -> the same node of `original`, None for nodes `original` lacks)."""

    def __init__(self, original, model, samples, counterpart) -> None:
        limit = MEMORY_LIMIT // 2  # the two streams together keep at most MEMORY_LIMIT of activations in memory
        self.original = Stream(original, samples, "original (fitting)", memory_limit=limit)
        self.rewritten = Stream(model, samples, "rewritten (fitting)", memory_limit=limit)
        self.pending: dict[str, object] = {}  # conv output name -> its original output, until measured
        self.measured: dict[str, float] = {}
        self.diverged = False  # whether a conv has been fitted yet (the streams differ from there on)
        self.counterpart = counterpart

    def data_at(self, node, original_node, op=None) -> fitting.ConvData:
        """The conv's data: its input x (original), x̂ (rewritten so far; None while nothing was rewritten) and
        its original output (a matrix op's `op`: in conv layout, see passes.matrix)."""
        x_name, y_name = original_node.inputs[0].name, original_node.outputs[0].name
        if self.diverged:
            self._measure(self.rewritten.advance(node, capture=list(self.pending)))
        else:  # the prefix is run once, by the original stream
            self.original.advance(original_node)
            self.rewritten.adopt(self.original, self.counterpart)
        got = self.original.advance(original_node, through=True, capture=[x_name, y_name])
        x, y = got[x_name], got[y_name]
        x_hat = self.rewritten.state[node.inputs[0].name] if self.diverged else None
        self.pending[y_name] = y
        self.diverged = True
        if op is not None:
            x, y = Mapped(x, op.input_first), Mapped(y, op.output_first)
            x_hat = None if x_hat is None else Mapped(x_hat, op.input_first)
        return fitting.ConvData(x, x_hat, y)

    def finish(self, last) -> dict[str, float]:
        """Run the rewritten stream through the `last` fitted conv; every fitted conv's measured output error."""
        self._measure(self.rewritten.advance(last, through=True, capture=list(self.pending)))
        return self.measured

    def _measure(self, got: dict) -> None:
        for name, col in got.items():
            ref = self.pending.pop(name)
            num = den = 0.0
            for a, b in zip(ref, col):  # float32 products (a measured error needs 2 digits, not 16), float64 sums
                d = np.subtract(a, b, dtype=np.float32).ravel()
                a = np.asarray(a, np.float32).ravel()
                num += float(np.dot(d, d))
                den += float(np.dot(a, a))
            self.measured[name] = float(np.sqrt(num / den)) if den > 0 else float(np.sqrt(num))

    def close(self) -> None:
        self.pending.clear()
        self.original.close()
        self.rewritten.close()
