"""One walk of the calibration stream that rewrites each probed conv alone at each of its probe ranks: what both
ways of measuring output gains (exact probes, first-order estimate) read a conv's own error from."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx_ir as ir

from onebyone.calibrated import whitening
from onebyone.calibrated.stream import Stream
from onebyone.passes import factorize
from onebyone.passes.plan import Decision
from onebyone.passes.rewrite import UniqueNames, insert, remove


def probe_factors(d: Decision):
    """The factors a conv is probed with, as a function of the rank: whitened by its input statistics in the input
    and pointwise forms; weight factors in the others (there the gain is a measured ratio, weight factors probe it)."""
    info, m = d.info, d.moments
    if d.form not in ("input", "pointwise"):
        return lambda rank: factorize.svd_factors(info.weight, info.groups, rank, d.form)
    s = m.second_moment
    svd = whitening.whitened_svd(info.weight, info.groups, s, s)
    return lambda rank: whitening.factorize_data(info.weight, info.groups, rank, s, s, s, m.mean, m.mean, svd=svd,
                                                 predict=False)


def walk(model: ir.Model, plans: list[tuple[Decision, list[int]]], samples: list[dict],
         tail: list[str] | None = None) -> Iterator[tuple[Decision, int, str, list[dict], list[dict]]]:
    """Per probed conv and probe rank, in graph order: (decision, rank, the conv's output name, per sample the conv's
    original output, per sample the values with only that conv rewritten at that rank: its output, and with `tail`
    those named values too, computed by the model's tail from the rewritten output in one onnxruntime session per
    conv for all its ranks). `model` is not modified; the stream holds only its frontier."""
    work = model.clone()
    nodes = list(work.graph)
    index = {id(n): i for i, n in enumerate(model.graph)}
    names = UniqueNames(work.graph)
    with Stream(work, samples, "original (sensitivity)", keep=tail or ()) as stream:
        for d, ranks in plans:
            if not ranks:
                continue
            node = nodes[index[id(d.info.node)]]
            stream.advance(node)
            conv_out = node.outputs[0].name
            original = stream.peek([conv_out])  # the conv's own output, before it is rewritten
            factors_at = probe_factors(d)
            for rank in ranks:
                done = insert(work.graph, node, factors_at(rank), names, {})
                try:
                    got = stream.peek([conv_out])
                    if tail:
                        local = [g[conv_out] for g in got]
                        got = stream.peek(tail + ([conv_out] if conv_out not in tail else []),
                                          given={conv_out: local}, reuse=True)
                finally:
                    remove(work.graph, done)
                yield d, rank, conv_out, original, got


def difference(original: list[dict], got: list[dict], name: str) -> list[np.ndarray]:
    """Per sample, got[name] - original[name] in float64."""
    return [np.asarray(g[name], np.float64) - np.asarray(o[name], np.float64) for o, g in zip(original, got)]
