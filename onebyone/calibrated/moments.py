"""Calibration statistics: streaming second moments of conv input channels, collected with onnxruntime.

Memory is O(C^2) per conv, never O(activations): each sample's activations are folded into the sums and dropped.
The sums use at most MOMENT_POSITIONS positions per value, spread over the samples (a random subset of each sample's
positions once a sample has more than its share): neighbouring positions of one image say little that the others do
not, so past that cap more positions cost product time, not information; every sample contributes.
Statistics are cached on disk, keyed by the model's bytes, the calibration inputs and the value names, so a
second run with other ranks does not recompute them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx_ir as ir

from onebyone.atomic import atomic_file
from onebyone.calibrated.blas_threads import alongside_onnxruntime
from onebyone.calibrated.holdout import in_held_out
from onebyone.verify.decisions import measured_outputs
from onebyone.verify.logits import softmax_input
from onebyone.verify.onnxruntime_run import Probe


@dataclasses.dataclass
class Moments:
    """Sums over all positions of all samples of a [C, *spatial] activation (optionally paired with another).

    `outer` = Σ x xᵀ, `total` = Σ x, `count` = number of positions. With a paired activation x̂ (the same value in
    a partially rewritten model), `cross` = Σ x x̂ᵀ, `outer_hat` = Σ x̂ x̂ᵀ and `total_hat` = Σ x̂; a paired record
    keeps no `outer` (None: the fit takes E[x xᵀ] from the unpaired statistics of all samples).
    """

    outer: np.ndarray | None
    total: np.ndarray
    count: int = 0
    cross: np.ndarray | None = None
    outer_hat: np.ndarray | None = None
    total_hat: np.ndarray | None = None
    _pending: list = dataclasses.field(default_factory=list, repr=False, compare=False)
    _pending_positions: int = dataclasses.field(default=0, repr=False, compare=False)

    @classmethod
    def zeros(cls, channels: int, paired: bool = False) -> Moments:
        z = lambda *s: np.zeros(s, dtype=np.float64)  # noqa: E731
        if paired:  # Σ x xᵀ is not kept for a pair (fitting takes E[x xᵀ] from the unpaired statistics)
            return cls(None, z(channels), 0, z(channels, channels), z(channels, channels), z(channels))
        return cls(z(channels, channels), z(channels))

    def update(self, x: np.ndarray, x_hat: np.ndarray | None = None) -> None:
        """Fold in one activation [N, C, *spatial] (and its paired version). Small activations are gathered and
        folded in together (see flush), so that the products run as large matrix products."""
        c = x.shape[1]
        self._pending.append((np.moveaxis(x, 1, 0).reshape(c, -1),
                              None if x_hat is None else np.moveaxis(x_hat, 1, 0).reshape(c, -1)))
        self._pending_positions += self._pending[-1][0].shape[1]
        if self._pending_positions >= CHUNK_POSITIONS:
            self.flush()

    def flush(self) -> None:
        """Fold in what update gathered (products in float64)."""
        if not self._pending:
            return
        xm = np.concatenate([p[0] for p in self._pending], axis=1).astype(np.float64)
        if self.outer is not None:
            self.outer += xm @ xm.T
        self.total += xm.sum(axis=1)
        self.count += xm.shape[1]
        if self._pending[0][1] is not None:
            hm = np.concatenate([p[1] for p in self._pending], axis=1).astype(np.float64)
            self.cross += xm @ hm.T
            self.outer_hat += hm @ hm.T
            self.total_hat += hm.sum(axis=1)
        self._pending, self._pending_positions = [], 0

    @property
    def second_moment(self) -> np.ndarray:
        """E[x xᵀ]."""
        self.flush()
        return self.outer / max(self.count, 1)

    @property
    def mean(self) -> np.ndarray:
        self.flush()
        return self.total / max(self.count, 1)

    def paired(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(E[x x̂ᵀ], E[x̂ x̂ᵀ], E[x], E[x̂]); an unpaired record is its own pair (x̂ = x)."""
        self.flush()
        n = max(self.count, 1)
        if self.cross is None:
            s = self.outer / n
            return s, s, self.mean, self.mean
        return self.cross / n, self.outer_hat / n, self.mean, self.total_hat / n


Progress = Callable[[int, int], None]
CHUNK_POSITIONS = 4096  # Moments.update gathers at least this many positions before multiplying
MOMENT_POSITIONS = 4096 * 32  # positions per value the channel moments use at most, spread over the samples
MIN_POSITIONS_PER_SAMPLE = 256  # ... but at least this many per sample (all of them when a sample has fewer)
SETTINGS = f"moments v2: {MOMENT_POSITIONS} positions, at least {MIN_POSITIONS_PER_SAMPLE} per sample"  # cache key


def positions_per_sample(count: int) -> int:
    """How many positions of each of `count` samples the moments of one value use at most."""
    return max(MIN_POSITIONS_PER_SAMPLE, MOMENT_POSITIONS // max(count, 1))


def spread(x: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """The activation [N, C, *spatial] as is when it has at most `limit` positions, else [1, C, limit]: a random
    subset of its positions (all N batch items pooled)."""
    c = x.shape[1]
    positions = x.size // max(c, 1)
    if positions <= limit:
        return x
    columns = np.moveaxis(x, 1, 0).reshape(c, positions)
    return columns[:, np.sort(rng.choice(positions, limit, replace=False))][None]


def collect(
    model: ir.Model, samples: list[dict], names: list[str], progress: Progress | None = None, layouts=None,
    held_outputs: dict | None = None,
) -> dict[str, Moments]:
    """Moments of the named values of `model` over `samples` (one onnxruntime run per sample), channels on axis 1
    (`layouts` maps a name to the function that puts its channels there: a matrix op's features, see passes.matrix),
    over at most positions_per_sample(len(samples)) positions of each sample (drawn with a fixed seed).

    `held_outputs`: a dict that receives the model's outputs on the held-out samples (calibrated.holdout), per output
    name in sample order (an ArgMax's or other decision's scores in its place, verify.decisions), and the logits
    behind a Softmax output (verify.logits.softmax_input), taken from the same runs (the model-level check's
    reference, at no extra run)."""
    outputs = measured_outputs(model) if held_outputs is not None else []
    softmax = softmax_input(model) if outputs else None
    outputs += [softmax.name] if softmax is not None and softmax.name not in outputs else []
    probe = Probe(model, list(dict.fromkeys(names + outputs)), "calibration run", only=True)
    stats: dict[str, Moments] = {}
    layouts = layouts or {}
    limit, rng = positions_per_sample(len(samples)), np.random.default_rng(0)
    if outputs:
        held_outputs.update({o: [] for o in outputs})
    with alongside_onnxruntime():
        for i, feed in enumerate(samples):
            got = probe.run(feed)
            if outputs and in_held_out(i, len(samples)):
                for o in outputs:
                    held_outputs[o].append(got[o])
            for n in names:
                x = got[n]
                x = spread(layouts[n](x) if n in layouts else x, limit, rng)
                if n not in stats:
                    stats[n] = Moments.zeros(x.shape[1])
                stats[n].update(x)
            if progress:
                progress(i + 1, len(samples))
        for m in stats.values():
            m.flush()
    return stats


def data_hash(model: ir.Model, samples: list[dict]):
    """A sha256 fed with the model and the calibration inputs, to derive cache keys from (see cache_key)."""
    h = hashlib.sha256()
    h.update(ir.serde.serialize_model(model).SerializeToString(deterministic=True))
    for feed in samples:
        for k in sorted(feed):
            h.update(k.encode())
            h.update(np.ascontiguousarray(feed[k]).tobytes())
    return h


def cache_key(model: ir.Model, samples: list[dict], names: list[str], data=None) -> str:
    """A digest of the model, the calibration inputs and the value names (`data`: their data_hash, when already
    computed, so that several keys on the same model and inputs hash them once)."""
    h = (data or data_hash(model, samples)).copy()
    h.update("\0".join(names).encode())
    return h.hexdigest()[:32]


def collect_cached(
    model: ir.Model, samples: list[dict], names: list[str], cache_dir: str | os.PathLike | None,
    progress: Progress | None = None, data=None, layouts=None, held_outputs: dict | None = None,
) -> tuple[dict[str, Moments], bool]:
    """`collect` with an on-disk cache in `cache_dir` (None: no cache; `data`: see cache_key). Returns (moments,
    loaded_from_cache); `held_outputs` (see collect) stays empty when the moments come from the cache."""
    if cache_dir is None:
        return collect(model, samples, names, progress, layouts, held_outputs), False
    folder = Path(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"moments-{cache_key(model, samples, names + [SETTINGS], data)}.npz"
    if path.is_file():
        with np.load(path) as data:
            return {
                n: Moments(data[f"{i}.outer"], data[f"{i}.total"], int(data[f"{i}.count"])) for i, n in enumerate(names)
            }, True
    stats = collect(model, samples, names, progress, layouts, held_outputs)
    arrays = {}
    for i, n in enumerate(names):
        arrays[f"{i}.outer"], arrays[f"{i}.total"], arrays[f"{i}.count"] = stats[n].outer, stats[n].total, stats[n].count
    with atomic_file(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)
    return stats, False
