"""Verification metrics against hand computations, and tolerance checks that fail when they should."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from onebyone import APPROXIMATE, LOSSLESS, RankPolicy, optimize, verify
from onebyone.models import generators
from onebyone.verify.metrics import compare_output, cosine, rel_l2, topk_agreement
from onebyone.verify.tolerances import Tolerances


def test_metrics_by_hand():
    ref = np.array([[3.0, 4.0]], np.float32)
    got = np.array([[3.0, 4.5]], np.float32)
    assert rel_l2(ref, got) == pytest.approx(0.5 / 5.0)
    assert cosine(ref, got) == pytest.approx((9 + 18) / (5 * np.hypot(3, 4.5)))
    m = compare_output("y", [ref], [got])
    assert m.max_abs == pytest.approx(0.5) and m.top1 == 1.0 and m.top5 is None
    # Relative error of an all-zero reference uses the absolute floor instead of dividing by zero.
    assert rel_l2(np.zeros(4), np.full(4, 1e-7), atol=1e-6) == pytest.approx(0.1)
    assert cosine(np.zeros(3), np.zeros(3)) == 1.0


def test_topk():
    ref = np.array([[0.1, 0.5, 0.2, 0.0, 0.9, 0.3, 0.05], [1, 0, 0, 0, 0, 0, 0]], np.float32)
    got = ref.copy()
    got[1] = [0, 1, 0, 0, 0, 0, 0]
    assert topk_agreement(ref, got, 1) == 0.5
    swapped = ref.copy()
    swapped[0, [4, 1]] = swapped[0, [1, 4]]  # row 0: new arg-max, same top-5 set
    assert topk_agreement(ref, swapped, 1) == 0.5
    assert topk_agreement(ref, swapped, 5) == 1.0
    swapped[0, 3] = 5.0  # a class from outside the top-5 enters it
    assert topk_agreement(ref, swapped, 5) == 0.5


def test_tolerances_report_each_failure():
    m = compare_output("y", [np.array([[1.0, 0.0]])], [np.array([[0.0, 1.0]])])
    fails = Tolerances(max_rel_l2=0.1, min_cosine=0.9, min_top1=1.0, max_abs=0.5).failures(m)
    assert len(fails) == 4 and all(f.startswith("y:") for f in fails)
    assert LOSSLESS.failures(compare_output("y", [np.ones((1, 3))], [np.ones((1, 3))])) == []


def test_approximate_rewrite_fails_lossless_tolerances_and_passes_loose_ones():
    model = ir.serde.deserialize_model(generators.resnet())
    optimized, report = optimize(model, RankPolicy("rank", rank=0.25), raise_on_failure=False)
    assert report.totals.rewritten > 0 and report.totals.lossless == 0
    assert report.verification["tolerances"]["max_rel_l2"] == APPROXIMATE.max_rel_l2
    strict = verify(model, optimized, tolerances=LOSSLESS)
    assert not strict.passed and strict.failures
    loose = verify(model, optimized, tolerances=Tolerances(max_rel_l2=10, min_cosine=-1, min_top1=0))
    assert loose.passed


def test_integer_and_boolean_outputs_are_judged_by_the_share_of_equal_elements():
    """A label map (int64) and a mask (bool) are decisions: their agreement is the share of equal elements (one label
    of 8 moved from class 0 to class 7 is 7/8 agreement, not a relative error of 7/‖labels‖), checked against
    min_top1 in place of relative error and cosine; LOSSLESS needs every element equal."""
    labels = np.array([[0, 1, 2, 3, 4, 5, 6, 0]], np.int64)
    moved = labels.copy()
    moved[0, 7] = 7
    m = compare_output("cls", [labels], [moved])
    assert m.agreement == pytest.approx(7 / 8) and m.cosine is None and m.max_abs == 7
    loose = Tolerances(max_rel_l2=1e-9, min_cosine=1.0, min_top1=0.8)
    assert loose.failures(m) == []  # rel L2 of the labels (7/‖labels‖ ≈ 0.67) is not checked
    assert Tolerances(max_rel_l2=1.0, min_cosine=0.0, min_top1=0.9).failures(m) == [
        "cls: 0.8750 of its elements agree < 0.9 (--min-top1)"]
    assert LOSSLESS.failures(m) and not LOSSLESS.failures(compare_output("cls", [labels], [labels.copy()]))
    mask = np.array([[True, False, True, True]])
    flipped = np.array([[True, True, True, True]])
    m = compare_output("mask", [mask, mask], [mask, flipped])
    assert m.agreement == pytest.approx(7 / 8)
    assert [f.split(":")[0] for f in APPROXIMATE.failures(m)] == ["mask"]  # 0.875 < 0.95


def test_decisions_are_measured_through_their_scores_typed_or_not():
    """verify.decisions.measured_outputs on an untyped graph (exporters may leave outputs without types): an ArgMax
    label, TopK's indices and Equal(ArgMax(s), 1) all stand for the scores `s` they are taken from; TopK's values are
    scores themselves; an integer output no decision computes (a Shape) is not measured."""
    from onnx import TensorProto, helper

    from onebyone.verify.decisions import measured_outputs

    nodes = [helper.make_node("Relu", ["x"], ["s"]), helper.make_node("ArgMax", ["s"], ["a"], axis=1),
             helper.make_node("TopK", ["s", "k"], ["v", "i"], axis=1), helper.make_node("Equal", ["a", "c"], ["e"]),
             helper.make_node("Shape", ["s"], ["shape"])]
    consts = [helper.make_tensor("k", TensorProto.INT64, [1], [2]), helper.make_tensor("c", TensorProto.INT64, [], [1])]

    def model(outputs, typed_shape=False):
        infos = [helper.ValueInfoProto(name=n) for n in outputs]
        if typed_shape:
            infos[-1] = helper.make_tensor_value_info("shape", TensorProto.INT64, [2])
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                                  infos, consts)
        return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))

    assert measured_outputs(model(["a", "v", "i", "e"])) == ["s", "v"]
    assert measured_outputs(model(["e"])) == ["s"]
    assert measured_outputs(model(["a", "shape"], typed_shape=True)) == ["s"]
    assert measured_outputs(model(["shape"], typed_shape=True)) == ["shape"]  # nothing else to measure


def test_the_int8_line_reports_decisions_by_agreement():
    """--int8's line on what INT8 alone does: float outputs by relative error and cosine, decisions by agreement (a
    label map's relative L2 would read as 0.5 here)."""
    from onebyone.tables import int8_line

    outputs = [{"worst_rel_l2": 0.5, "cosine": None, "agreement": 0.9},
               {"worst_rel_l2": 0.01, "cosine": 0.999, "agreement": None}]
    q = {"format": "QDQ", "activations": "uint8", "weights": "int8", "calibration_samples": 8,
         "alone": {"outputs": outputs}}
    assert int8_line(q).endswith("INT8 alone vs the original: worst rel L2 0.01, cosine 0.999000, 0.9000 of the "
                                 "decisions agree")
    q["alone"]["outputs"] = outputs[:1]
    assert int8_line(q).endswith("INT8 alone vs the original: 0.9000 of the decisions agree")
