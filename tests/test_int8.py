"""INT8 deployment (`--int8`): the rewrite followed by onnxruntime's static quantization, timed, checked and verified
as it will run; INT8 alone (the original quantized the same way) is the baseline."""

from __future__ import annotations

import collections
import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from onebyone import RankPolicy, optimize
from onebyone.errors import OneByOneError
from onebyone.int8 import quantize
from onebyone.latency import LatencyModel
from onebyone.models import generators
from onebyone.passes import plan
from onebyone.passes.analysis import analyze
from onebyone.verify.metrics import cosine
from onebyone.verify.onnxruntime_run import run_samples
from test_cli import cli, digest, one_line_error


def _samples(count: int, size: int = 32, seed: int = 3) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"input": rng.standard_normal((1, 3, size, size)).astype(np.float32)} for _ in range(count)]


def _ops(model: ir.Model) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph)


@pytest.mark.parametrize("opset", [11, 17])
def test_quantized_model_keeps_its_interface_and_float_outputs(opset, tmp_path, monkeypatch):
    """QDQ around the convs, the output's producer left float, the same inputs and outputs, outputs close to the float
    model's on unseen inputs (onnxruntime); below opset 13 the model is converted first; the input is not changed and
    nothing is left in the working folder (onnxruntime's quantizer writes scratch files there)."""
    monkeypatch.chdir(tmp_path)
    proto = generators.vgg(opset=opset)
    before = proto.SerializeToString()
    model = ir.serde.deserialize_model(proto)
    q = quantize(model, _samples(8))
    assert proto.SerializeToString() == before
    ops = _ops(q)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > ops["Conv"] > 0
    assert [v.name for v in q.graph.inputs] == [v.name for v in model.graph.inputs]
    assert [(v.name, v.dtype) for v in q.graph.outputs] == [(v.name, v.dtype) for v in model.graph.outputs]
    for out in q.graph.outputs:
        assert out.producer().op_type != "DequantizeLinear"  # computed in float, not rounded to 256 levels
    unseen = _samples(4, seed=11)
    ref, got = run_samples(model, unseen, "float"), run_samples(q, unseen, "int8")
    for name in ref:
        r, g = np.concatenate(ref[name]), np.concatenate(got[name])
        assert cosine(r, g) > 0.99 and not np.allclose(r, g, rtol=0, atol=1e-7)  # close, and really quantized
    assert not list(tmp_path.iterdir())


def test_quantization_failure_is_one_error():
    model = ir.serde.deserialize_model(generators.vgg())
    with pytest.raises(OneByOneError, match="calibration samples"):
        quantize(model, [])
    with pytest.raises(OneByOneError, match="INT8 quantization failed"):
        quantize(model, [{"wrong_name": np.zeros((1, 3, 32, 32), np.float32)}])


def test_lossless_rewrite_then_int8_matches_int8_alone():
    """An exactly low-rank model rewritten losslessly and quantized gives what INT8 alone gives, up to quantization
    noise; the report holds the scheme and INT8 alone's verification, and the verification uses the approximate
    tolerances."""
    model = ir.serde.deserialize_model(generators.vgg(low_rank=0.5))
    calib, unseen = _samples(8), _samples(4, seed=11)
    heard = []
    optimized, report = optimize(model, RankPolicy("exact"), samples=unseen, calibration=calib, int8=True,
                                 raise_on_failure=False, progress=lambda *a: heard.append(a))
    assert report.totals.lossless > 0
    assert ("quantizing (INT8)", 2, 2) in heard  # the rewrite and the original (INT8 alone), each shown
    assert _ops(optimized)["QuantizeLinear"] > 0
    assert report.int8["calibration_samples"] == 8 and report.int8["format"] == "QDQ"
    alone_err = max(o["worst_rel_l2"] for o in report.int8["alone"]["outputs"])
    composed_err = max(o["worst_rel_l2"] for o in report.verification["outputs"])
    assert 0 < alone_err < 0.1 and composed_err < 3 * alone_err + 1e-3
    assert report.verification["tolerances"]["max_rel_l2"] == 0.05  # approximate tolerances, not the lossless ones
    alone = quantize(model, calib)
    ref, got = run_samples(alone, unseen, "int8 alone"), run_samples(optimized, unseen, "composed")
    for name in ref:
        assert cosine(np.concatenate(ref[name]), np.concatenate(got[name])) > 0.999


def test_int8_needs_calibration_and_an_int8_latency_model():
    model = ir.serde.deserialize_model(generators.vgg(low_rank=0.5))
    with pytest.raises(OneByOneError, match="calibration"):
        optimize(model, RankPolicy("exact"), int8=True)
    with pytest.raises(OneByOneError, match="int8=True"):
        optimize(model, RankPolicy("exact"), calibration=_samples(2), int8=True, latency=LatencyModel(threads=1))


def test_int8_latency_times_quantized_micro_models(monkeypatch, tmp_path):
    """With int8 the conv and its pairs are timed quantized (the fixed-cost pass-through stays float), and the cache
    keeps them apart from float timings."""
    model = ir.serde.deserialize_model(generators.vgg(size=16, widths=(8, 16), low_rank=0.5))
    timed = []
    lat = LatencyModel(threads=1, repeats=3, cache_dir=tmp_path, int8=True)
    real = lat.backend.time
    monkeypatch.setattr(lat.backend, "time", lambda models, *a: (timed.append(models), real(models, *a))[1])
    decisions = [plan.start(i) for i in analyze(model, {"input": (1, 3, 16, 16)})]
    lat.measure(decisions)
    assert timed and all(any(n.op_type == "QuantizeLinear" for n in m.graph) for ms in timed for m in ms[:-1])
    assert all(not any(n.op_type == "QuantizeLinear" for n in ms[-1].graph.node) for ms in timed)  # a ModelProto
    assert lat.runtime["precision"] == "int8"
    float_lat = LatencyModel(threads=1, repeats=3, cache_dir=tmp_path)
    live = [d for d in decisions if d.candidate]
    assert lat._key(live[0]) != float_lat._key(live[0])


def test_cli_int8(tmp_path):
    """--int8 writes the quantized rewrite, says what INT8 alone does, records it in the report; without calibration
    it is a one-line error."""
    model = tmp_path / "vgg.onnx"
    onnx.save(generators.vgg(low_rank=0.5), model)
    before = digest(model)
    npz = tmp_path / "calib.npz"
    np.savez(npz, input=np.random.default_rng(3).standard_normal((8, 1, 3, 32, 32)).astype(np.float32))
    out, rep = tmp_path / "o.onnx", tmp_path / "r.json"
    proc = cli("optimize", model, "-o", out, "--policy", "exact", "--int8", "--calibration", npz, "--cost", "macs",
               "--report", rep)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "INT8 alone vs the original" in proc.stdout and digest(model) == before
    written = onnx.load(out)
    assert any(n.op_type == "QuantizeLinear" for n in written.graph.node)
    assert {p.key: p.value for p in written.metadata_props}["onebyone.result"] == "approximate (INT8)"
    report = json.loads(rep.read_text())
    assert report["int8"]["alone"]["passed"] and report["totals"]["rewritten"] > 0
    proc = cli("optimize", model, "-o", out, "--policy", "exact", "--int8", "--calibration", npz, "--cost", "time",
               "--threads", "1", "--report", rep)
    assert proc.returncode in (0, 1) and "from INT8 alone" in proc.stdout, proc.stdout + proc.stderr
    report = json.loads(rep.read_text())
    assert report["timing"]["baseline"] == "INT8 alone" and report["int8"]["alone_speedup"] > 0
    assert report["timing"]["runtime"]["precision"] == "int8"
    proc = cli("optimize", model, "-o", tmp_path / "strict.onnx", "--policy", "exact", "--int8", "--calibration", npz,
               "--cost", "macs", "--max-rel-error", "1e-6")
    assert proc.returncode == 1 and "INT8 alone fails it too" in proc.stdout and not (tmp_path / "strict.onnx").exists()
    one_line_error(cli("optimize", model, "-o", tmp_path / "x.onnx", "--int8"), "calibration")


def test_error_policy_bounds_the_error_of_the_quantized_rewrite():
    """--policy error with --int8 searches budgets on the rewrite as deployed: the quantized model it returns is
    within the error target on the calibration samples (measured here independently with onnxruntime)."""
    from onebyone.verify.metrics import worst_part_rel_l2

    model = ir.serde.deserialize_model(generators.vgg())
    calib = _samples(8)
    target = 0.08
    optimized, report = optimize(model, RankPolicy("error", max_error=target), calibration=calib, int8=True,
                                 raise_on_failure=False)
    assert _ops(optimized)["QuantizeLinear"] > 0 and report.totals.rewritten > 0
    ref, got = run_samples(model, calib, "float"), run_samples(optimized, calib, "composed")
    assert worst_part_rel_l2(ref, got, {}) <= target


def test_plain_names_keep_the_interface_and_the_numbers():
    """Before quantizing, values get plain names (onnxruntime's quantizer mixed up basic-pitch's tf2onnx names with
    ';'): the main graph's input and output names stay, a graph input already called like a fresh name does not
    clash, and the renamed model computes the same (onnxruntime)."""
    from onnx import TensorProto, helper, numpy_helper

    from onebyone.int8 import _plain_names

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "conv;conv")
    b = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "conv;conv2")
    nodes = [helper.make_node("Conv", ["t0", "conv;conv", "conv;conv2"], ["conv;conv22"], pads=[1] * 4),
             helper.make_node("Relu", ["conv;conv22"], ["t1"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("t0", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("t1", TensorProto.FLOAT, [1, 4, 8, 8])], [w, b])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    renamed = _plain_names(proto)
    onnx.checker.check_model(renamed, full_check=True)
    names = {i.name for i in renamed.graph.initializer} | {o for n in renamed.graph.node for o in n.output}
    assert not any(";" in n for n in names) and [i.name for i in renamed.graph.input] == ["t0"]
    assert [o.name for o in renamed.graph.output] == ["t1"] and len(names) == 4
    feeds = [{"t0": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)}]
    ref, got = run_samples(ir.serde.deserialize_model(proto), feeds, "a"), run_samples(ir.serde.deserialize_model(renamed), feeds, "b")
    np.testing.assert_array_equal(ref["t1"][0], got["t1"][0])


def test_a_bundled_detector_quantizes_without_litter(tmp_path, monkeypatch):
    """PP-OCR det (symbolic shape inference fails on it: pre-processing falls back) quantizes into a model onnxruntime
    runs, with its probability map in float, and onnxruntime's scratch files stay out of the working folder."""
    from onebyone.models.real import real_model

    monkeypatch.chdir(tmp_path)
    det = real_model("ppocr-det")
    q = quantize(ir.load(str(det.path())), det.calibration_samples(2))
    assert _ops(q)["QuantizeLinear"] > 0 and not list(tmp_path.iterdir())
    out = run_samples(q, det.samples()[:1], "int8")
    (name,) = out
    levels = out[name][0].astype(np.float64) * 255  # a quantized output would sit on the grid of 1/255 steps
    assert np.any(np.abs(levels - np.round(levels)) > 1e-3)
