"""Verification that measures every part of an output on its own scale, never fails a correct result, and still
catches real damage. References: onnxruntime runs and numpy."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import onebyone
from onebyone import APPROXIMATE, LOSSLESS, RankPolicy
from onebyone.models import generators
from onebyone.calibrated import sensitivity
from onebyone.runtime import targets
from onebyone.verify.compare import compare_outputs, verify_models
from onebyone.verify.metrics import rel_l2
from onebyone.verify.onnxruntime_run import run_samples
from onebyone.verify.parts import output_splits
from test_cli import cli


def _ir(proto: onnx.ModelProto) -> ir.Model:
    return ir.serde.deserialize_model(proto)


def _edited(proto: onnx.ModelProto, name: str, fn) -> onnx.ModelProto:
    """A copy of `proto` whose initializer `name` is replaced by fn(its array)."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    (t,) = [t for t in out.graph.initializer if t.name == name]
    t.CopyFrom(numpy_helper.from_array(fn(numpy_helper.to_array(t)).astype(np.float32), name))
    return out


def _samples(n: int, seed: int = 0, shape=(1, 3, 32, 32)) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"input": rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


@pytest.fixture(scope="module")
def detector():
    return generators.detector()


def test_a_concat_output_splits_into_its_inputs_also_through_a_transpose(detector):
    split = output_splits(_ir(detector))[detector.graph.output[0].name]
    assert split.axis == 1 and [(b[1], b[2]) for b in split.bounds] == [(0, 4), (4, 12)]
    transposed = onnx.ModelProto()
    transposed.CopyFrom(detector)
    old = transposed.graph.output[0].name
    transposed.graph.node.append(helper.make_node("Transpose", [old], ["anchors_last"], perm=[0, 2, 1]))
    del transposed.graph.output[:]
    transposed.graph.output.append(helper.make_tensor_value_info("anchors_last", TensorProto.FLOAT, None))
    split = output_splits(_ir(transposed))["anchors_last"]
    assert split.axis == 2 and [(b[1], b[2]) for b in split.bounds] == [(0, 4), (4, 12)]
    assert output_splits(_ir(generators.vgg())) == {}  # a classifier's output is one part


def test_damage_confined_to_small_scale_channels_fails_verification(detector):
    """Scores in [0, 1] beside boxes in pixels: scaling the score head by 1.5 is invisible to the relative error of
    the whole output, and must fail per part."""
    damaged = _edited(detector, "conv8.weight", lambda w: w * 1.5)
    samples = _samples(4)
    ref = run_samples(_ir(detector), samples)
    got = run_samples(_ir(damaged), samples)
    name = detector.graph.output[0].name
    whole = rel_l2(np.stack(ref[name]), np.stack(got[name]))
    assert whole < 0.01  # the old yardstick would pass it
    v = verify_models(_ir(detector), _ir(damaged), samples, APPROXIMATE)
    assert not v.passed and any("[4:12]" in f and "--max-rel-error" in f for f in v.failures), v.failures
    scores = next(p for p in v.outputs[0].parts if "[4:12]" in p.name)
    expected = rel_l2(np.stack(ref[name])[:, :, 4:], np.stack(got[name])[:, :, 4:], 1e-9)
    assert scores.rel_l2 == pytest.approx(expected, rel=1e-6)


def test_budget_steers_away_from_the_convs_that_feed_a_small_scale_part(detector, monkeypatch):
    """conv7 is the score head's 3x3 conv, conv3 the box head's (same shape). Measured per part, the score head's
    errors reach the model output and the budget spares it; measured on the whole output it looks free."""
    calib, samples = _samples(16, seed=1), _samples(4, seed=2)
    policy = RankPolicy("budget", macs=0.6)

    def ranks_and_gain():
        _, rep = onebyone.optimize(_ir(detector), policy, samples=samples, calibration=calib, raise_on_failure=False)
        layers = {l.name: l for l in rep.layers}
        return layers["conv7"].rank or 16, layers["conv3"].rank or 16, layers["conv7"].output_error_curve[1]

    score_rank, box_rank, score_gain = ranks_and_gain()
    monkeypatch.setattr(sensitivity, "output_splits", lambda model: {})
    blind_score_rank, _, blind_gain = ranks_and_gain()
    assert score_rank > box_rank and score_rank > blind_score_rank
    assert score_gain > 20 * blind_gain


def _near_zero_map() -> onnx.ModelProto:
    """A detector-like map: sigmoid of very negative logits (values ~1e-5, as PP-OCR's map on an input with no text)."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((1, 3, 3, 3)) * 0.3).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["logits"], pads=[1, 1, 1, 1]),
             helper.make_node("Sub", ["logits", "shift"], ["shifted"]),
             helper.make_node("Sigmoid", ["shifted"], ["map"])]
    graph = helper.make_graph(nodes, "map", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("map", TensorProto.FLOAT, [1, 1, 16, 16])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(12.0, np.float32), "shift")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_float_noise_on_a_near_zero_output_passes_and_real_damage_fails():
    model = _ir(_near_zero_map())
    samples = [{"x": np.random.default_rng(k).standard_normal((1, 3, 16, 16)).astype(np.float32)} for k in range(3)]
    ref = run_samples(model, samples)
    assert max(float(np.abs(a).max()) for a in ref["map"]) < 1e-3
    # a compiler's reordering of float sums: the logits move by ~1e-3 relative, the map by ~1e-7 absolute
    noisy = {"map": [a * (1 + 1e-3 * np.random.default_rng(9).standard_normal(a.shape)).astype(np.float32) for a in ref["map"]]}
    assert rel_l2(np.stack(ref["map"]), np.stack(noisy["map"])) > 1e-4  # what the old check failed on
    for tol in (targets.family(targets.resolve("cpu")).tolerances, LOSSLESS):
        v = compare_outputs(ref, noisy, tol, "ort", "tvm", "random")
        assert v.passed, v.failures
        assert v.notes and "noise floor" in v.notes[0]
    wrong = {"map": [a + 1e-3 for a in ref["map"]]}  # an offset 100x the values
    assert not compare_outputs(ref, wrong, targets.family(targets.resolve("cpu")).tolerances, "ort", "tvm", "random").passed


@pytest.mark.parametrize("damage", ["weight x1.5", "wrong conv", "transposed layout"])
@pytest.mark.parametrize("tolerances", ["lossless", "cpu", "approximate"])
def test_real_damage_fails_every_tolerance_set(damage, tolerances):
    original = generators.vgg(size=16, widths=(8, 16))
    samples = _samples(3, shape=(1, 3, 16, 16))
    if damage == "weight x1.5":
        bad = _edited(original, "conv2.weight", lambda w: w * 1.5)
    elif damage == "wrong conv":
        bad = _edited(original, "conv2.weight", lambda w: np.random.default_rng(5).standard_normal(w.shape) * w.std())
    else:
        bad = _edited(original, "conv2.weight", lambda w: w.swapaxes(2, 3))
    tol = {"lossless": LOSSLESS, "cpu": targets.family(targets.resolve("cpu")).tolerances, "approximate": APPROXIMATE}[tolerances]
    v = verify_models(_ir(original), _ir(bad), samples, tol)
    assert not v.passed, (damage, tolerances, v.outputs)
    same = verify_models(_ir(original), _ir(original), samples, tol)
    assert same.passed


def test_api_raises_on_a_failed_verification():
    model = generators.vgg(size=16, widths=(8, 16))
    tight = onebyone.Tolerances(max_rel_l2=1e-9, min_cosine=1.0, min_top1=1.0)
    with pytest.raises(onebyone.VerificationFailed, match="relative error") as info:
        onebyone.optimize(_ir(model), RankPolicy("rank", rank=0.5), tolerances=tight)
    assert info.value.report.verification["passed"] is False and info.value.model is not None
    optimized, report = onebyone.optimize(_ir(model), RankPolicy("rank", rank=0.5), tolerances=tight,
                                          raise_on_failure=False)
    assert not report.verification["passed"]


def test_optimize_records_its_tolerances_and_verify_uses_them(tmp_path):
    original = tmp_path / "vgg.onnx"
    onnx.save(generators.vgg(size=16, widths=(8, 16), low_rank=0.6), original)
    out = tmp_path / "vgg.1x1.onnx"  # rank 0.5 < 0.6: approximate, within the approximate tolerances
    cli("optimize", original, "-o", out, "--policy", "rank", "--rank", "0.5", check_rc=0)
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["onebyone.result"] == "approximate" and '"max_rel_l2": 0.05' in meta["onebyone.tolerances"]
    assert meta["onebyone.policy"].startswith("rank 0.5") and '"passed": true' in meta["onebyone.verified"]
    proc = cli("verify", original, out, check_rc=0)  # the approximate tolerances it was written with
    assert "metadata" in proc.stdout and "PASS" in proc.stdout
    proc = cli("verify", original, out, "--max-rel-error", "1e-7", check_rc=1)
    assert "FAIL" in proc.stdout and "(--max-rel-error)" in proc.stdout
    plain = tmp_path / "plain.onnx"  # no metadata: lossless tolerances
    onnx.save(onnx.load(str(out)), plain)
    m = onnx.load(str(plain))
    del m.metadata_props[:]
    onnx.save(m, plain)
    cli("verify", original, plain, check_rc=1)


def test_an_unchanged_text_detector_passes_its_tvm_check_on_random_inputs(tmp_path):
    """PP-OCR's sigmoid map is ~0 on random inputs: float noise of the TVM build there must not read as FAIL."""
    import shutil

    from onebyone.models import bundled

    original = bundled("ppocr-det").path()
    same = tmp_path / "same.onnx"
    shutil.copy(original, same)
    proc = cli("verify", original, same, "--target", "cpu", "--input-shape", "x:1x3x128x128", check_rc=0)
    assert proc.stdout.count("PASS") == 3 and "noise floor" in proc.stdout
