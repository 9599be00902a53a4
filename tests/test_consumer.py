"""The metric of what reads a conv's output (calibrated.consumer): found through a ReLU to a Conv, absent elsewhere,
and what the output-side forms' data-aware fits keep: the directions the consumer reads, not the loudest ones."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from conftest import rel_err, run_ort
from onebyone import RankPolicy, optimize
from onebyone.calibrated import consumer
from onebyone.models.weights import random_weight


def _two_convs(w1, w2, between="Relu", after=None):
    """x -> Conv(w1, pads 1) -> [between] -> Conv1x1(w2) -> [after] -> y."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], pads=[1, 1, 1, 1], name="first")]
    src = "h"
    if between:
        nodes.append(helper.make_node(between, ["h"], ["a"]))
        src = "a"
    nodes.append(helper.make_node("Conv", [src, "w2"], ["z" if after else "y"], name="second"))
    if after:
        nodes.append(helper.make_node(after, ["z", "h"] if after == "Add" else ["z"], ["y"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, w1.shape[1], 10, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_the_metric_is_the_consumers_gram_through_a_relu_and_absent_elsewhere(rng):
    w1 = random_weight(16, 8, (3, 3), rng)
    w2 = random_weight(16, 16, (1, 1), rng)
    first = next(n for n in ir.serde.deserialize_model(_two_convs(w1, w2)).graph if n.name == "first")
    g = consumer.metric(first)
    m = w2[:, :, 0, 0].T.astype(np.float64)
    expected = m @ m.T / (np.trace(m @ m.T) / 16) + consumer.FLOOR * np.eye(16)
    assert np.allclose(g, expected)
    residual = ir.serde.deserialize_model(_two_convs(w1, w2, between=None, after="Add"))  # h is read twice
    assert consumer.metric(next(n for n in residual.graph if n.name == "first")) is None
    last = next(n for n in residual.graph if n.name == "second")
    assert consumer.metric(last) is None  # read by an Add, not a conv


def test_the_output_form_keeps_what_the_consumer_reads(rng, monkeypatch):
    """The first conv's 8 loud outputs are ignored by the consumer, its 8 quiet ones are read: the output form at rank
    8 fitted in the consumer's metric keeps the quiet ones, so the model output barely moves, while the plain
    principal subspace (metric off) keeps the loud ones and moves it a lot (onnxruntime, held-out inputs)."""
    w1 = random_weight(16, 8, (3, 3), rng)
    w1[8:] *= 10.0  # loud outputs 8..15
    w2 = random_weight(12, 16, (1, 1), rng)
    w2[:, 8:] = 0.0  # ... that the consumer does not read
    model = _two_convs(w1, w2, between=None)

    def draw(count, seed):
        r = np.random.default_rng(seed)
        return [{"x": r.standard_normal((1, 8, 10, 10)).astype(np.float32)} for _ in range(count)]

    def rewritten():
        optimized, report = optimize(ir.serde.deserialize_model(model), RankPolicy("rank", rank=8), verify=False,
                                     forms=("output",), calibration=draw(16, 1))
        assert report.layers[0].form == "output" and report.layers[0].action == "rewritten"
        return ir.serde.serialize_model(optimized), report.layers[0].fit

    with_metric, fit = rewritten()
    assert "consumer" in fit
    monkeypatch.setattr(consumer, "metric", lambda node: None)
    plain, _ = rewritten()
    held = draw(4, 2)
    err = {label: max(rel_err(run_ort(model, f)[0], run_ort(m, f)[0]) for f in held)
           for label, m in (("metric", with_metric), ("plain", plain))}
    assert err["metric"] < 0.1 * err["plain"], err
