"""Output gains to first order, at a cost linear in the model's depth: every conv's gain from one backward model.

The exact probes (sensitivity._measure) run the model's tail once per probed conv, so their cost grows with the square
of the depth. To first order a conv's output error δ moves the measured model output (a part of an output, or a
Softmax's top-class margins) by J·δ, and ‖J·δ‖² = Σ_j (u_j·J·δ)² over an orthonormal basis u_j of the measured space;
u·J·δ = (Jᵀu)·δ, and one backward run gives Jᵀu at every conv at once. A measured space of at most EXACT_DIRECTIONS
dimensions per sample (a classifier's margins) is probed along such a basis (exact to first order); a larger one
along RANDOM_DIRECTIONS random ±1 directions per sample, whose squares average to ‖J·δ‖² (an unbiased estimate).
So the probes cost the reference runs, one forward and a few backward runs per probe sample, and one walk of the
stream for the convs' own errors (the rewritten conv alone at each probe rank), whatever the depth.

The gain is the ratio, as in the exact probes, of the estimated model-output relative error to the conv's own, at
the same probe ranks and on the same samples; the budget treats it the same way. First order is what the budget's
error model (sqrt(Σ gain² · local error²)) assumes already; where the exact probes measure a conv's error reaching
the outputs less than linearly (a saturating output), the estimate is the larger, the cautious side.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onebyone.calibrated.backward import Backward, backward_model
from onebyone.calibrated.probe_walk import difference, walk
from onebyone.calibrated.stream import Column, SpillFiles
from onebyone.passes.plan import Decision
from onebyone.verify.logits import TOP_CLASSES, SoftmaxInput
from onebyone.verify.metrics import rel_l2_denominator, worst_part_rel_l2
from onebyone.verify.onnxruntime_run import Probe, session, weights_in_memory
from onebyone.verify.parts import Split

EXACT_DIRECTIONS = 8  # measured spaces of at most this many dimensions per sample are probed along a basis
RANDOM_DIRECTIONS = 4  # larger ones along this many random ±1 directions per sample
GRADIENT_MEMORY = 64 * 2**20  # bytes of gradients kept in memory; past it they go to disk
BACKWARD_COST = 3.0  # a backward run, in forward runs of the model (measured: 2.1x PP-OCR det, 3.1x open_nsfw)


class Direction:
    """One backward run's seeds (output name -> array), the measured part it probes and its weight in the estimate
    (1 along a basis; 1/RANDOM_DIRECTIONS along random directions)."""

    def __init__(self, seeds: dict[str, np.ndarray], part: int, weight: float) -> None:
        self.seeds, self.part, self.weight = seeds, part, weight


def _helmert(k: int) -> np.ndarray:
    """An orthonormal basis [k-1, k] of the vectors of length k that sum to 0."""
    basis = np.zeros((k - 1, k))
    for j in range(1, k):
        basis[j - 1, :j] = 1.0
        basis[j - 1, j] = -j
        basis[j - 1] /= np.sqrt(j * (j + 1))
    return basis


def _unrows(softmax: SoftmaxInput, rows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The inverse of softmax.rows: an array of `shape` from its [rows, classes] view."""
    axis = softmax.axis % len(shape)
    if softmax.flattened:
        return rows.reshape(shape)
    moved = tuple(d for i, d in enumerate(shape) if i != axis) + (shape[axis],)
    return np.moveaxis(rows.reshape(moved), -1, axis)


def margin_directions(ref: np.ndarray, softmax: SoftmaxInput, rng: np.random.Generator) -> list[Direction]:
    """Seeds on the logits `ref` (one sample) that probe its rows' top-class margins, centred (see
    verify.logits.top_margins_rel_l2)."""
    rows = softmax.rows(np.asarray(ref, np.float64))
    k = min(TOP_CLASSES, rows.shape[1])
    top = np.argsort(-rows, axis=1, kind="stable")[:, :k]
    if k < 2:
        return []
    if len(rows) * (k - 1) <= EXACT_DIRECTIONS:
        picks = [(r, h, 1.0) for r in range(len(rows)) for h in _helmert(k)]
    else:
        picks = [(None, w - w.mean(1, keepdims=True), 1.0 / RANDOM_DIRECTIONS)
                 for w in rng.choice([-1.0, 1.0], size=(RANDOM_DIRECTIONS, len(rows), k))]
    out = []
    for row, values, weight in picks:
        seed = np.zeros_like(rows)
        if row is None:
            np.put_along_axis(seed, top, values, 1)
        else:
            seed[row, top[row]] = values
        out.append(Direction({softmax.name: _unrows(softmax, seed, ref.shape).astype(np.float32)}, 0, weight))
    return out


def part_masks(outputs: list[str], shapes: dict, splits: dict[str, Split]) -> list[tuple[str, np.ndarray]]:
    """(output name, 0/1 mask of one part) for every measured part of the outputs, as worst_part_rel_l2 cuts them."""
    out = []
    for name in outputs:
        split, shape = splits.get(name), shapes[name]
        if split is None or len(shape) <= split.axis:
            out.append((name, np.ones(shape, np.float32)))
            continue
        for _, start, stop in split.bounds:
            mask = np.zeros(shape, np.float32)
            index = [slice(None)] * len(shape)
            index[split.axis] = slice(start, stop)
            mask[tuple(index)] = 1
            out.append((name, mask))
    return out


def part_directions(masks: list[tuple[str, np.ndarray]], rng: np.random.Generator) -> list[Direction]:
    """Seeds probing every part: its unit vectors when it has at most EXACT_DIRECTIONS elements, else random ±1."""
    out = []
    for p, (name, mask) in enumerate(masks):
        where = np.flatnonzero(mask)
        if len(where) <= EXACT_DIRECTIONS:
            for i in where:
                seed = np.zeros(mask.size, np.float32)
                seed[i] = 1
                out.append(Direction({name: seed.reshape(mask.shape)}, p, 1.0))
        else:
            for _ in range(RANDOM_DIRECTIONS):
                seed = rng.choice([-1.0, 1.0], size=mask.shape).astype(np.float32) * mask
                out.append(Direction({name: seed}, p, 1.0 / RANDOM_DIRECTIONS))
    return out


def _margin_norm(refs: list[np.ndarray], softmax: SoftmaxInput) -> float:
    """‖the reference's centred top-class logits‖ over all samples (top_margins_rel_l2's denominator)."""
    total = 0.0
    for r in refs:
        rows = softmax.rows(np.asarray(r, np.float64))
        top = np.sort(rows, axis=1)[:, ::-1][:, :min(TOP_CLASSES, rows.shape[1])]
        total += float(np.sum((top - top.mean(1, keepdims=True)) ** 2))
    return np.sqrt(total)


class Gradients:
    """Per sample and direction, the gradient at every target (columns spilled to disk past GRADIENT_MEMORY), the
    directions as (sample, Direction), and the reference norm of every measured part."""

    def __init__(self, model: ir.Model, bw: Backward, samples: list[dict], softmax: SoftmaxInput | None,
                 outputs: list[str], splits: dict, shapes: dict, progress=None) -> None:
        # without onnxruntime's arenas: their memory would stay held through the stream walk that follows
        forward = Probe(model, sorted(set(bw.forward) | set(outputs)), "original (first-order gains)", only=True,
                        arena=False)
        weights = weights_in_memory(bw.proto)
        backward = session(bw.proto, "backward model (first-order gains)", initializers=weights, arena=False)
        names = [Backward.gradient_output(t) for t in bw.targets]
        rng = np.random.default_rng(0)
        masks = None if softmax else part_masks(outputs, shapes, splits)
        self.spill = SpillFiles()
        self.planned = 0  # bytes of the columns held in memory, once full
        self.columns: dict[str, Column] = {}
        self.directions: list[tuple[int, Direction]] = []
        refs = []
        for s, feed in enumerate(samples):
            values = forward.run(feed)
            refs.append({o: values[o] for o in outputs})
            dirs = margin_directions(values[softmax.name], softmax, rng) if softmax else part_directions(masks, rng)
            for direction in dirs:
                seeds = {Backward.seed_input(o): direction.seeds.get(o, np.zeros(shapes[o], np.float32))
                         for o in outputs}
                got = backward.run(names, {**{n: values[n] for n in bw.forward}, **seeds})
                self._store(bw.targets, got, len(samples) * len(dirs))
                self.directions.append((s, direction))
            if progress:
                progress(s + 1, len(samples))
        if softmax:
            self.norms = np.array([_margin_norm([r[softmax.name] for r in refs], softmax)])
        else:
            self.norms = np.array([np.sqrt(sum(float(np.sum((np.asarray(r[o], np.float64) * m) ** 2)) for r in refs))
                                   for o, m in masks])
            self.norms = rel_l2_denominator(self.norms, np.array([m.sum() * len(refs) for _, m in masks]))

    def _store(self, targets: list[str], arrays: list[np.ndarray], count: int) -> None:
        for t, a in zip(targets, arrays):
            if t not in self.columns:  # a column's place is chosen for all its arrays when its first comes
                size = a.nbytes * count
                spill = self.planned + size > GRADIENT_MEMORY
                self.planned += 0 if spill else size
                self.columns[t] = Column(count, self.spill if spill else None, size)
            col = self.columns[t]
            col[len(self.directions)] = a

    def relative_error(self, target: str, deltas: list[np.ndarray]) -> float:
        """The first-order model-output relative error (worst part) of per-sample changes `deltas` at `target`."""
        col, est = self.columns[target], np.zeros(len(self.norms))
        for j, (s, direction) in enumerate(self.directions):
            a = float(np.vdot(col[j], deltas[s]))
            est[direction.part] += direction.weight * a * a
        return float(np.max(np.sqrt(est) / self.norms))

    def close(self) -> None:
        self.columns.clear()
        self.spill.close()


def measure(model: ir.Model, plans: list[tuple[Decision, list[int]]], samples: list[dict],
            softmax: SoftmaxInput | None, outputs: list[str], splits: dict, types: tuple[dict, dict],
            progress=None) -> dict:
    """Per conv name, (probe ranks, first-order gains there), as sensitivity._measure returns exact ones; `types`:
    every value's (shapes, dtypes), as backward.measured_types gives them. Raises gradients.Unsupported (naming the
    op) when the model's backward model cannot be built."""
    shapes, dtypes = types
    targets = [d.info.node.outputs[0].name for d, ranks in plans if ranks]
    bw = backward_model(model, outputs, targets, shapes, dtypes)
    total, done = sum(len(r) for _, r in plans) + len(samples), 0

    def step(*_):
        nonlocal done
        done += 1
        if progress:
            progress(done, total)

    grads = Gradients(model, bw, samples, softmax, outputs, splits, shapes, step)
    measured: dict[str, tuple[list[int], list[float]]] = {}
    try:
        for d, rank, conv_out, original, got in walk(model, plans, samples):
            local = worst_part_rel_l2({conv_out: [o[conv_out] for o in original]},
                                      {conv_out: [g[conv_out] for g in got]})
            if local > 1e-6:
                deltas = difference(original, got, conv_out)
                rs, gs = measured.setdefault(d.info.name, ([], []))
                rs.append(rank)
                gs.append(grads.relative_error(conv_out, deltas) / local)
            step()
    finally:
        grads.close()
    return measured


def directions_per_sample(shapes: dict, softmax: SoftmaxInput | None, outputs: list[str], splits: dict) -> int:
    """How many backward runs each probe sample takes."""
    rng = np.random.default_rng(0)
    if softmax:
        return len(margin_directions(np.zeros(shapes[softmax.name], np.float32), softmax, rng))
    return len(part_directions(part_masks(outputs, shapes, splits), rng))


def cheaper(model: ir.Model, decisions: list[Decision], plans: list[tuple[Decision, list[int]]],
            directions: int) -> bool:
    """Whether the first-order estimate costs less than the exact probes, in forward runs per probe sample: the
    exact probes run, per probe rank, the model's tail after the conv (its share of the model's conv MACs); the
    estimate one forward and `directions` backward runs (BACKWARD_COST each)."""
    order = {id(n): i for i, n in enumerate(model.graph)}
    placed = sorted((order.get(id(d.info.node), 0), d.info.macs if d.info.output_shape else 0) for d in decisions)
    total = sum(m for _, m in placed) or 1
    exact = 0.0
    for d, ranks in plans:
        at = order.get(id(d.info.node), 0)
        exact += len(ranks) * sum(m for i, m in placed if i > at) / total
    return 1 + directions * BACKWARD_COST < exact
