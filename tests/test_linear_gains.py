"""First-order output gains: the backward model (calibrated.backward, gradients) against finite differences in float64, and
the gains it gives against an independent numpy computation and the exact probes."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from conftest import run_ort
from onebyone.calibrated import linear_gains, probe_walk, sensitivity
from onebyone.calibrated.backward import Backward, backward_model, measured_types
from onebyone.calibrated.gradients import Unsupported
from onebyone.passes.rewrite import UniqueNames, insert
from onebyone.verify.onnxruntime_run import session
from test_sensitivity import _decisions, _samples


def _many_ops_model(rng, dtype=np.float32) -> onnx.ModelProto:
    """One input through every kind of op the rules cover (strided, dilated, grouped and transposed convs, pools,
    nearest resize, activations, broadcasts, shuffles, matrix products), to one output of 5 values; `dtype` float32
    or float64 (the same numbers)."""
    t = TensorProto.FLOAT if dtype == np.float32 else TensorProto.DOUBLE
    r = np.random.default_rng(0)

    def init(name, *shape, scale=0.3):
        return numpy_helper.from_array((r.standard_normal(shape) * scale).astype(dtype), name)

    inits = [init("w1", 8, 4, 3, 3), init("w2", 8, 2, 3, 3), init("w3", 8, 8, 2, 2), init("w4", 6, 8, 1, 1),
             init("bn_s", 8), init("bn_b", 8), init("bn_m", 8), numpy_helper.from_array(
                 (np.abs(r.standard_normal(8)) + 0.5).astype(dtype), "bn_v"), init("g", 6, 5), init("gb", 5),
             init("m", 48, 6), numpy_helper.from_array(np.array([1, 6, 8, 8], np.int64), "shape"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
             numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"),
             numpy_helper.from_array(np.array([1, 1], np.int64), "st"),
             numpy_helper.from_array(np.array([7, 7], np.int64), "en"),
             numpy_helper.from_array(np.array([2, 3], np.int64), "ax"),
             numpy_helper.from_array(np.array(6, dtype), "six"),
             numpy_helper.from_array(np.array(-1, dtype), "lo"), numpy_helper.from_array(np.array(1.5, dtype), "hi"),
             numpy_helper.from_array(np.array(0.1, dtype), "tenth"), numpy_helper.from_array(np.array(1, dtype), "one"),
             numpy_helper.from_array(np.array(0, dtype), "zero"), numpy_helper.from_array(np.array(1.5, dtype), "p"),
             numpy_helper.from_array(np.array([1, 6], np.int64), "wide"), init("slope", 6)]
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w1"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1]),                     # 4x16x16 -> 8x8x8
        n("BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["b1"]),
        n("HardSigmoid", ["b1"], ["h1"]), n("Mul", ["b1", "h1"], ["s1"]),                       # a swish of two values
        n("Conv", ["s1", "w2"], ["c2"], group=4, dilations=[2, 2], pads=[2, 2, 2, 2]),
        n("Clip", ["c2", "lo", "hi"], ["k2"]), n("Div", ["k2", "six"], ["d2"]),
        n("MaxPool", ["d2"], ["p2"], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1]),  # -> 8x4x4
        n("ConvTranspose", ["p2", "w3"], ["u2"], strides=[2, 2]),                      # -> 8x8x8
        n("Resize", ["p2", "", "scales"], ["r2"], mode="nearest", coordinate_transformation_mode="asymmetric",
          nearest_mode="floor"),
        n("Add", ["u2", "r2"], ["a2"]), n("Sigmoid", ["a2"], ["g2"]), n("Mul", ["a2", "g2"], ["e2"]),
        n("Concat", ["e2", "s1"], ["cat"], axis=1), n("Slice", ["cat", "st", "en", "ax"], ["sl"]),   # 16x6x6
        n("Pad", ["sl", "pads"], ["pd"]), n("AveragePool", ["pd"], ["ap"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        n("Split", ["ap"], ["h_a", "h_b"], axis=1, num_outputs=2),
        n("AveragePool", ["h_b"], ["ab"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1),
        n("Add", ["h_a", "ab"], ["hs"]), n("Conv", ["hs", "w4"], ["c4"]), n("Relu", ["c4"], ["q4"]),
        n("Transpose", ["q4"], ["t4"], perm=[0, 2, 3, 1]),
        n("Reshape", ["t4", "shape"], ["f4"]), n("Tanh", ["f4"], ["th"]),
        n("GlobalAveragePool", ["th"], ["gp"]), n("Flatten", ["gp"], ["fl"]),
        # elementwise: every rule on one branch each, summed (Erf apart: the reference evaluator's is float32)
        n("Mul", ["fl", "tenth"], ["f10"]), n("Exp", ["f10"], ["z2"]),
        n("Softplus", ["fl"], ["z3"]), n("Elu", ["fl"], ["z4"], alpha=0.7), n("PRelu", ["fl", "slope"], ["z5"]),
        n("Abs", ["fl"], ["fa"]), n("Add", ["fa", "one"], ["fa1"]), n("Sqrt", ["fa1"], ["z6"]),
        n("Log", ["fa1"], ["z7"]), n("Reciprocal", ["fa1"], ["z8"]), n("Pow", ["fa1", "p"], ["z9"]),
        n("Greater", ["fl", "zero"], ["pos"]), n("Where", ["pos", "fl", "f10"], ["z10"]),
        n("Expand", ["f10", "wide"], ["z11"]),
        n("Sum", ["z2", "z3", "z4", "z5", "z6", "z7", "z8", "z9", "z10", "z11"], ["zs"]),
        n("Gemm", ["zs", "g", "gb"], ["logits"]), n("Softmax", ["logits"], ["y"], axis=-1),
    ]
    graph = helper.make_graph(nodes, "many", [helper.make_tensor_value_info("x", t, [1, 4, 16, 16])],
                              [helper.make_tensor_value_info("y", t, [1, 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def test_the_backward_model_is_the_transposed_jacobian_by_finite_differences_in_float64(rng):
    """For every target, (Jᵀu)·δ from the backward model equals the central finite difference of u·y along δ at the
    target, computed in float64 by the ONNX reference evaluator on the same model (every op the rules cover)."""
    model = ir.serde.deserialize_model(_many_ops_model(rng))
    x = rng.standard_normal((1, 4, 16, 16)).astype(np.float32)
    shapes, dtypes = measured_types(model, {"x": x})
    targets = ["c1", "c2", "u2", "c4", "s1"]
    bw = backward_model(model, ["y"], targets, shapes, dtypes)
    forward = run_ort(_with_outputs(_many_ops_model(rng), bw.forward), {"x": x})
    values = dict(zip(bw.forward, forward[1:]))
    u = rng.standard_normal((1, 5)).astype(np.float32)
    grads = session(bw.proto).run(None, {**values, Backward.seed_input("y"): u})
    double = _many_ops_model(rng, np.float64)
    for target, g in zip(targets, grads):
        delta = rng.standard_normal(shapes[target])
        eps = 1e-6
        plus, minus = (_perturbed(double, target, x, s * eps * delta) for s in (1, -1))
        fd = float(np.sum((plus - minus) * u)) / (2 * eps)
        assert float(np.sum(g * delta)) == pytest.approx(fd, rel=1e-3, abs=1e-6), target


def test_the_erf_gradient_by_finite_differences():
    """Erf's rule against central differences in float64 (a wider step: the reference evaluator's Erf is float32)."""
    graph = helper.make_graph([helper.make_node("Erf", ["x"], ["y"])], "erf",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    model = ir.serde.deserialize_model(proto)
    x = np.array([[-1.5, -0.3, 0.0, 0.4, 2.0]], np.float32)
    shapes, dtypes = measured_types(model, {"x": x})
    bw = backward_model(model, ["y"], ["x"], shapes, dtypes)
    u = np.float32([[0.5, -1.0, 2.0, 1.0, 3.0]])
    (g,) = session(bw.proto).run(None, {**{n: x for n in bw.forward}, Backward.seed_input("y"): u})
    graph.input[0].type.tensor_type.elem_type = graph.output[0].type.tensor_type.elem_type = TensorProto.DOUBLE
    evaluator, h = ReferenceEvaluator(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])), 1e-3
    x64 = x.astype(np.float64)
    fd = (evaluator.run(None, {"x": x64 + h})[0] - evaluator.run(None, {"x": x64 - h})[0]) * u / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=1e-3)


def _pool_model(op: str, dtype: int, attrs: dict) -> onnx.ModelProto:
    nodes = [helper.make_node("Identity", ["x"], ["xi"]), helper.make_node(op, ["xi"], ["y"], **attrs)]
    graph = helper.make_graph(nodes, "pool", [helper.make_tensor_value_info("x", dtype, [1, 2, 8, 8])],
                              [helper.make_tensor_value_info("y", dtype, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)


@pytest.mark.parametrize("op, attrs", [
    ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=1)),
    ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=0)),
    ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 0, 0], ceil_mode=1, count_include_pad=1)),
    ("AveragePool", dict(kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 0, 0], ceil_mode=1, count_include_pad=1)),
    ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)),
], ids=["avg-pads-counted", "avg-pads-not-counted", "avg-no-pads", "avg-begin-pads", "max"])
def test_pool_gradients_where_ceil_mode_adds_windows_past_the_pads(rng, op, attrs):
    """With ceil_mode a last window reaches past the padded input (8x8, stride 2): the divisor there (counted pads,
    not the grid beyond them: the rule had counted that grid) and the max's position come out of the rule as finite
    differences of the forward pass give them (float64, reference evaluator, which onnxruntime matches to 1e-7 on
    these)."""
    model = ir.serde.deserialize_model(_pool_model(op, TensorProto.FLOAT, attrs))
    x = rng.standard_normal((1, 2, 8, 8)).astype(np.float32)
    shapes, dtypes = measured_types(model, {"x": x})
    (k, s), pads = attrs["kernel_shape"][:1] + attrs["strides"][:1], attrs["pads"]
    assert shapes["y"][2] > (8 + pads[0] + pads[2] - k) // s + 1  # ceil_mode added a window
    bw = backward_model(model, ["y"], ["xi"], shapes, dtypes)
    forward = run_ort(_with_outputs(_pool_model(op, TensorProto.FLOAT, attrs), bw.forward), {"x": x})
    u = rng.standard_normal(shapes["y"]).astype(np.float32)
    (g,) = session(bw.proto).run(None, {**dict(zip(bw.forward, forward[1:])), Backward.seed_input("y"): u})
    reference = ReferenceEvaluator(_pool_model(op, TensorProto.DOUBLE, attrs))
    delta, eps = rng.standard_normal(x.shape), 1e-6
    plus, minus = (reference.run(None, {"x": x.astype(np.float64) + s * eps * delta})[0] for s in (1, -1))
    assert float(np.sum(g * delta)) == pytest.approx(float(np.sum((plus - minus) * u)) / (2 * eps), rel=1e-4)


def _with_outputs(proto: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    for name in names:
        out.graph.output.add().name = name
    return out


def _perturbed(proto: onnx.ModelProto, target: str, x: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """The model's output with `delta` added to the value `target` (float64, reference evaluator)."""
    p = onnx.ModelProto()
    p.CopyFrom(proto)
    for node in p.graph.node:
        node.input[:] = [f"{target}.moved" if i == target else i for i in node.input]
    at = next(i for i, node in enumerate(p.graph.node) if target in node.output)
    p.graph.node.insert(at + 1, helper.make_node("Add", [target, "delta"], [f"{target}.moved"]))
    p.graph.input.append(helper.make_tensor_value_info("delta", TensorProto.DOUBLE, delta.shape))
    return ReferenceEvaluator(p).run(None, {"x": x.astype(np.float64), "delta": delta})[0]


def test_an_op_without_a_rule_is_named():
    """A tail through an op without a gradient rule cannot be built, and the error names the op."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Sin", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "sin", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [numpy_helper.from_array(np.ones((2, 2, 3, 3), np.float32), "w")])
    model = ir.serde.deserialize_model(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))
    shapes, dtypes = measured_types(model, {"x": np.ones((1, 2, 4, 4), np.float32)})
    with pytest.raises(Unsupported, match="Sin"):
        backward_model(model, ["y"], ["c"], shapes, dtypes)


def _pooled_head_model(rng):
    """out[1, 3] = Gemm(GlobalAveragePool(conv_a(x) + conv_b(x))): a linear tail from each conv, 3 outputs (probed
    along a basis: exact to first order, and first order is exact here)."""
    w = (rng.standard_normal((16, 16, 3, 3)) / 12).astype(np.float32)
    head = rng.standard_normal((16, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "wa"), numpy_helper.from_array(w.copy() * 0.5, "wb"),
             numpy_helper.from_array(head, "head")]
    nodes = [helper.make_node("Conv", ["x", "wa"], ["ya"], name="conv_a", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "wb"], ["yb"], name="conv_b", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["ya", "yb"], ["s"]), helper.make_node("GlobalAveragePool", ["s"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("Gemm", ["f", "head"], ["out"])]
    graph = helper.make_graph(nodes, "pooled", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 12, 12])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return ir.serde.deserialize_model(proto), head


def _gains_both_ways(model, decisions, samples, monkeypatch, notes=None):
    """output_gains with the first-order estimate chosen (`notes` filled), then with the exact probes chosen."""
    monkeypatch.setattr(linear_gains, "cheaper", lambda *a: True)
    first = sensitivity.output_gains(model, decisions, samples, notes=notes)
    monkeypatch.setattr(linear_gains, "cheaper", lambda *a: False)
    return first, sensitivity.output_gains(model, decisions, samples)


def test_first_order_gains_equal_a_numpy_computation_and_the_exact_probes_on_a_linear_tail(rng, monkeypatch):
    """With a linear tail, the first-order gain at each probe rank is the exact one: ‖head·mean(δ)‖ / ‖out‖ over
    ‖δ‖ / ‖ya‖, with δ the rewritten conv's change measured by onnxruntime and the tail applied in numpy; the exact
    probes (forced) measure the same."""
    model, head = _pooled_head_model(rng)
    samples = _samples(rng)
    decisions = _decisions(model, samples)
    notes = {}
    first, exact = _gains_both_ways(model, decisions, samples, monkeypatch, notes)
    assert notes["gains_method"] == sensitivity.FIRST_ORDER
    outs = [run_ort(model, s)[0] for s in samples]
    d = next(d for d in decisions if d.info.name == "conv_a")
    ranks = [r for r in sensitivity.probe_ranks(d) if r < d.numerical]
    assert len(ranks) > 1
    for rank in ranks:
        rewritten = model.clone()
        node = next(n for n in rewritten.graph if n.name == "conv_a")
        insert(rewritten.graph, node, probe_walk.probe_factors(d)(rank), UniqueNames(rewritten.graph), {})
        ya = [run_ort(_with_outputs(ir.serde.serialize_model(model), ["ya"]), s)[1] for s in samples]
        ya_new = [run_ort(_with_outputs(ir.serde.serialize_model(rewritten), ["ya"]), s)[1] for s in samples]
        deltas = [(b - a).astype(np.float64) for a, b in zip(ya, ya_new)]
        moved = np.concatenate([(dl.mean(axis=(2, 3)) @ head).ravel() for dl in deltas])
        final = np.linalg.norm(moved) / np.linalg.norm(np.concatenate([o.ravel() for o in outs]))
        local = np.linalg.norm(np.concatenate([x.ravel() for x in deltas])) / np.linalg.norm(
            np.concatenate([a.ravel() for a in ya]))
        assert first["conv_a"][rank] == pytest.approx(max(final / local, exact["conv_a"][ranks[-1]]), rel=2e-3)
    np.testing.assert_allclose(first["conv_a"][ranks[0]:], exact["conv_a"][ranks[0]:], rtol=2e-3)


def test_first_order_gains_read_weights_shared_through_identity(rng, monkeypatch):
    """The linear-tail model with its weights and head read through Identity copies (as torch.onnx shares equal
    tensors): the backward model takes them as the constants they are ("weight computed at run time" before), and
    its first-order gains equal the exact probes, as without the copies."""
    model, _ = _pooled_head_model(rng)
    for node in list(model.graph):
        for index, name in ((1, "wa"), (1, "wb"), (1, "head")):
            value = node.inputs[index] if len(node.inputs) > index else None
            if value is not None and value.name == name:
                copy = ir.node("Identity", [value])
                model.graph.insert_before(node, copy)
                node.replace_input_with(index, copy.outputs[0])
    assert sum(n.op_type == "Identity" for n in model.graph) == 3
    samples = _samples(rng)
    notes = {}
    first, exact = _gains_both_ways(model, _decisions(model, samples), samples, monkeypatch, notes)
    assert notes["gains_method"] == sensitivity.FIRST_ORDER
    for name in ("conv_a", "conv_b"):
        np.testing.assert_allclose(first[name], exact[name], rtol=2e-3)


def test_the_exact_probes_measure_a_model_the_rules_do_not_cover(rng, monkeypatch):
    """A tail through an op without a rule: output_gains falls back to the exact probes even when the first-order
    estimate would be the cheaper, and says why."""
    model, _ = _pooled_head_model(rng)
    tail = next(n for n in model.graph if n.op_type == "Flatten")
    sin = ir.node("Sin", [tail.inputs[0]])
    model.graph.insert_before(tail, sin)
    tail.replace_input_with(0, sin.outputs[0])
    samples = _samples(rng)
    notes = {}
    chosen, exact = _gains_both_ways(model, _decisions(model, samples), samples, monkeypatch, notes)
    assert "exact probes" in notes["gains_method"] and "Sin" in notes["gains_method"]
    assert set(chosen) == set(exact)
    for name in exact:
        np.testing.assert_allclose(chosen[name], exact[name], rtol=1e-6)


def test_a_decision_output_is_measured_through_the_scores_it_is_taken_from(rng, monkeypatch):
    """The linear-tail model with its output replaced by the ArgMax of it (a label, as segmentation and classifier
    exports often end): no gradient flows through a label and its relative error moves in steps, so the gains, both
    ways, are those of the scores — equal to the gains of the same model with the scores as its output."""
    from onebyone.verify.decisions import measured_outputs

    scores, _ = _pooled_head_model(rng)
    labelled = scores.clone()
    label = ir.node("ArgMax", [labelled.graph.outputs[0]], attributes={"axis": 1, "keepdims": 0})
    label.outputs[0].name, label.outputs[0].dtype = "label", ir.DataType.INT64
    labelled.graph.append(label)
    labelled.graph.outputs[0] = label.outputs[0]
    assert measured_outputs(labelled) == ["out"] and measured_outputs(scores) == ["out"]
    samples = _samples(rng)
    notes = {}
    first, exact = _gains_both_ways(labelled, _decisions(labelled, samples), samples, monkeypatch, notes)
    assert notes["gains_method"] == sensitivity.FIRST_ORDER
    first_scores, exact_scores = _gains_both_ways(scores, _decisions(scores, samples), samples, monkeypatch)
    for name in ("conv_a", "conv_b"):
        np.testing.assert_allclose(first[name], first_scores[name], rtol=1e-6)
        np.testing.assert_allclose(exact[name], exact_scores[name], rtol=1e-6)
        assert np.all(np.asarray(first[name]) > 0)


def test_a_label_taken_from_a_softmax_is_measured_through_its_logits_margins(rng, monkeypatch):
    """A classifier exported as ArgMax(Softmax(z)): its label is measured as a Softmax output is, through the margins
    of the logits z (verify.logits), so its gains equal those of the same model ending in the Softmax."""
    from onebyone.calibrated.search import Reference
    from onebyone.verify.logits import softmax_input

    def ending(ops):
        model, _ = _pooled_head_model(np.random.default_rng(7))
        for op, attrs in ops:
            node = ir.node(op, [model.graph.outputs[0]], attributes=attrs)
            node.outputs[0].name = op.lower()
            model.graph.append(node)
            model.graph.outputs[0] = node.outputs[0]
        return model

    probabilities = ending([("Softmax", {"axis": 1})])
    labelled = ending([("Softmax", {"axis": 1}), ("ArgMax", {"axis": 1, "keepdims": 0})])
    assert softmax_input(labelled) == softmax_input(probabilities) and softmax_input(labelled).name == "out"
    samples = _samples(rng)
    assert "margins" in Reference(labelled, samples).check_measure
    first, exact = _gains_both_ways(labelled, _decisions(labelled, samples), samples, monkeypatch)
    first_p, exact_p = _gains_both_ways(probabilities, _decisions(probabilities, samples), samples, monkeypatch)
    for name in ("conv_a", "conv_b"):
        np.testing.assert_allclose(first[name], first_p[name], rtol=1e-6)
        np.testing.assert_allclose(exact[name], exact_p[name], rtol=1e-6)
