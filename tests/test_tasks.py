"""Task outcomes and the verification of Softmax classifiers: logit changes, against numpy on a small classifier."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from onebyone.models import tasks
from onebyone.verify import logits
from onebyone.verify.onnxruntime_run import run_samples


def _classifier(w: np.ndarray, b: np.ndarray, softmax: bool = True) -> ir.Model:
    """x [1, K] -> x·w + b (-> Softmax)."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["logits"])]
    out = "logits"
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1))
        out = "probs"
    graph = helper.make_graph(
        nodes, "classifier", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, w.shape[0]])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, w.shape[1]])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                                                        ir_version=8))


def test_logit_changes_match_numpy_and_show_what_saturated_probabilities_hide():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 3)).astype(np.float32)
    b = np.array([4.0, -4.0, 0.0], np.float32)  # class 0 far ahead: probabilities near 1
    delta = np.zeros_like(b)
    delta[1] = 1.0  # the optimized model moves one logit by 1
    original, optimized = _classifier(w, b), _classifier(w, b + delta)
    inputs = [{"x": (0.1 * rng.standard_normal((1, 6))).astype(np.float32)} for _ in range(5)]
    got = tasks.outcome("classifier", inputs, run_samples(original, inputs), run_samples(optimized, inputs),
                        (original, optimized))
    z = np.concatenate([s["x"] for s in inputs]) @ w.astype(np.float64) + b
    top2 = np.sort(z, axis=1)[:, -2:]
    assert np.isclose(got["logit_rel_error"], np.sqrt(5) / np.linalg.norm(z), rtol=1e-4)
    centred = z - z.mean(1, keepdims=True)  # 3 classes: each row's top 5 are all of them
    moved = np.tile(delta - delta.mean(), (5, 1))
    assert np.isclose(got["margin_rel_error"], np.linalg.norm(moved) / np.linalg.norm(centred), rtol=1e-4)
    assert np.isclose(got["max_logodds_change"], 1.0, rtol=1e-5)
    assert np.isclose(got["min_margin"], (top2[:, 1] - top2[:, 0]).min(), rtol=1e-4)
    assert got["unchanged"] and got["max_prob_change"] < 0.01  # the probabilities' verdict does not see it


def test_no_logit_changes_without_a_softmax_output_or_without_the_models():
    w, b = np.eye(3, dtype=np.float32), np.zeros(3, np.float32)
    plain = _classifier(w, b, softmax=False)
    assert tasks.logits_of(plain) is None
    assert tasks.logit_changes(plain, plain, [{"x": np.ones((1, 3), np.float32)}]) is None
    model = _classifier(w, b)
    assert tasks.logits_of(model) == "logits"
    inputs = [{"x": np.ones((1, 3), np.float32)}]
    outs = run_samples(model, inputs)
    assert set(tasks.outcome("classifier", inputs, outs, outs)) == {"max_prob_change", "top1", "unchanged"}
    onnx.checker.check_model(ir.serde.serialize_model(model))


def test_the_verification_notes_logits_that_moved_more_than_the_probabilities_show():
    from onebyone.verify.compare import verify_models
    from onebyone.verify.tolerances import APPROXIMATE

    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 3)).astype(np.float32)
    b = np.array([6.0, -6.0, 0.0], np.float32)
    moved = b + np.array([0.0, 1.0, -1.0], np.float32)
    inputs = [{"x": (0.1 * rng.standard_normal((1, 6))).astype(np.float32)} for _ in range(4)]
    original, optimized = _classifier(w, b), _classifier(w, moved)
    result = verify_models(original, optimized, inputs, APPROXIMATE)
    assert result.passed  # the probabilities barely move
    z = np.concatenate([s["x"] for s in inputs]) @ w.astype(np.float64) + b
    centred = z - z.mean(1, keepdims=True)  # 3 classes: all of them are each row's top classes; a Softmax ignores shifts
    shift = (moved - b) - (moved - b).mean()
    expected = np.linalg.norm(np.tile(shift, (4, 1))) / np.linalg.norm(centred)
    (note,) = [n for n in result.notes if "Softmax" in n]
    assert f"rel L2 {expected:.3g}" in note and "top 3 classes" in note
    assert not [n for n in verify_models(original, original, inputs, APPROXIMATE).notes if "Softmax" in n]
    shifted = _classifier(w, b + 3.0)  # every logit moved by 3: the same probabilities, nothing to note
    assert not [n for n in verify_models(original, shifted, inputs, APPROXIMATE).notes if "Softmax" in n]
    plain = _classifier(w, b, softmax=False)
    assert not [n for n in verify_models(plain, _classifier(w, moved, softmax=False), inputs, APPROXIMATE).notes
                if "Softmax" in n]


def test_top_margins_are_the_margins_for_two_classes_shift_free_and_blind_to_far_classes():
    """verify.logits.top_margins_rel_l2 against numpy: two classes, the margins' relative error; a row shifted as a
    whole (a Softmax ignores it) counts nothing; in a wide head, changes to classes outside each row's top 5 count
    nothing and changes inside them count; opset < 13 Softmax rows are every axis from `axis` on."""
    rng = np.random.default_rng(3)
    two = [rng.normal(0, 4, (6, 2)).astype(np.float32) for _ in range(3)]
    moved = [z + rng.normal(0, 0.5, z.shape).astype(np.float32) for z in two]
    margin = np.concatenate([z[:, 0] - z[:, 1] for z in two]).astype(np.float64)
    margin_moved = np.concatenate([z[:, 0] - z[:, 1] for z in moved]).astype(np.float64)
    last = logits.SoftmaxInput("z", -1, False)
    np.testing.assert_allclose(logits.top_margins_rel_l2(two, moved, last),
                               np.linalg.norm(margin_moved - margin) / np.linalg.norm(margin), rtol=1e-6)
    assert logits.top_margins_rel_l2(two, [z + rng.normal(0, 9, (6, 1)) for z in two], last) < 1e-6
    wide = rng.normal(0, 1, (4, 7, 1000)).astype(np.float32)  # [batch, time, classes], Softmax over the classes
    top = np.argsort(-wide, axis=-1)[..., :5]
    far = wide.copy()
    np.put_along_axis(far, np.argsort(-wide, axis=-1)[..., 5:], -50.0, axis=-1)
    near = wide.copy()
    np.put_along_axis(near, top[..., :1], np.take_along_axis(wide, top[..., :1], -1) + 1.0, axis=-1)
    for softmax in (logits.SoftmaxInput("z", 2, True), logits.SoftmaxInput("z", -1, False)):
        assert logits.top_margins_rel_l2([wide], [far], softmax) < 1e-6
        picked = np.take_along_axis(wide, top, -1).astype(np.float64)
        centred = picked - picked.mean(-1, keepdims=True)
        bumped = picked.copy()
        bumped[..., 0] += 1.0
        bumped -= bumped.mean(-1, keepdims=True)
        np.testing.assert_allclose(logits.top_margins_rel_l2([wide], [near], softmax),
                                   np.linalg.norm(bumped - centred) / np.linalg.norm(centred), rtol=1e-5)


def test_the_softmax_input_names_its_axis_and_the_opset_rule():
    model = _classifier(np.eye(3, dtype=np.float32), np.zeros(3, np.float32))
    assert logits.softmax_input(model) == logits.SoftmaxInput("logits", 1, False)
    assert logits.softmax_input(_classifier(np.eye(3, dtype=np.float32), np.zeros(3, np.float32), False)) is None
    proto = ir.serde.serialize_model(model)
    del proto.graph.node[-1].attribute[:]  # no axis: 1 before opset 13 (rows: every axis from it on), -1 since
    for version, expected in ((11, logits.SoftmaxInput("logits", 1, True)),
                              (13, logits.SoftmaxInput("logits", -1, False))):
        proto.opset_import[0].version = version
        assert logits.softmax_input(ir.serde.deserialize_model(proto)) == expected
