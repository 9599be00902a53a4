"""Per-conv output gains (passes.sensitivity) and the budget split they steer."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from conftest import run_ort
from onebyone import RankPolicy, optimize
from onebyone.calibrated import moments as calibration
from onebyone.calibrated import sensitivity, whitening
from onebyone.passes import plan
from onebyone.verify.onnxruntime_run import with_outputs
from onebyone.passes.analysis import analyze


def _two_branch_model(rng, scale_a: float, scale_b: float, offset: float = 0.0):
    """out = scale_a * Conv_a(x) + scale_b * Conv_b(x) + offset, with Conv_a and Conv_b sharing one weight
    value (but as separate initializers), 3x3, 16 -> 16 channels."""
    w = (rng.standard_normal((16, 16, 3, 3)) / 12).astype(np.float32)
    inits = [numpy_helper.from_array(w, "wa"), numpy_helper.from_array(w.copy(), "wb"),
             numpy_helper.from_array(np.float32([scale_a]), "sa"), numpy_helper.from_array(np.float32([scale_b]), "sb"),
             numpy_helper.from_array(np.full((1, 16, 12, 12), offset, np.float32), "c")]
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["ya"], name="conv_a", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "wb"], ["yb"], name="conv_b", pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["ya", "sa"], ["za"]),
        helper.make_node("Mul", ["yb", "sb"], ["zb"]),
        helper.make_node("Add", ["za", "zb"], ["s"]),
        helper.make_node("Add", ["s", "c"], ["out"]),
    ]
    graph = helper.make_graph(nodes, "two_branch", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 12, 12])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 16, 12, 12])], inits)
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))


def _samples(rng, count=8):
    return [{"x": rng.standard_normal((1, 16, 12, 12)).astype(np.float32)} for _ in range(count)]


def _decisions(model, samples):
    infos = analyze(model, {"x": (1, 16, 12, 12)})
    names = sorted({i.node.inputs[0].name for i in infos if i.skip_reason is None})
    moments = calibration.collect(model, samples, names)
    out = []
    for i in infos:
        m = moments.get(i.node.inputs[0].name) if i.skip_reason is None else None
        spectrum = whitening.spectrum(i.weight, i.groups, m.second_moment) if m is not None else None
        out.append(plan.start(i, spectrum, m))
    return out


def test_gain_is_the_ratio_of_output_to_conv_error_measured_independently(rng):
    """With out = conv_a(x) + conv_b(x) + offset, an error δ in conv_a's output is the same δ in `out`, so
    the gain is ‖ya‖ / ‖out‖ over the samples whatever δ is (computed here from onnxruntime outputs)."""
    model = _two_branch_model(rng, 1.0, 1.0, offset=3.0)
    samples = _samples(rng)
    gains = sensitivity.output_gains(model, _decisions(model, samples), samples)
    proto = with_outputs(model, ["ya", "yb"])
    runs = [run_ort(proto, s) for s in samples]  # [out, ya, yb]
    out = np.concatenate([r[0].ravel() for r in runs]).astype(np.float64)
    for name, k in (("conv_a", 1), ("conv_b", 2)):
        y = np.concatenate([r[k].ravel() for r in runs]).astype(np.float64)
        expected = np.linalg.norm(y) / np.linalg.norm(out)
        assert name in gains and len(gains[name]) == 17  # ranks 0..16
        np.testing.assert_allclose(gains[name], expected, rtol=2e-3)


def test_budget_cuts_the_conv_whose_errors_reach_the_output_least(rng):
    """Two convs with the same weight: conv_a's output is scaled by 0.01 before the model output, conv_b's by 1.
    Their local error curves are identical; the data-aware budget must take the MACs from conv_a, and its model
    output error must be below that of weight-only SVD, which cannot tell them apart."""
    model = _two_branch_model(rng, 0.01, 1.0)
    calib, held = _samples(rng, 16), _samples(rng, 4)
    policy = RankPolicy("budget", macs=0.75)
    data_model, data_report = optimize(model, policy, verify=False, calibration=calib)
    weight_model, _ = optimize(model, policy, verify=False)
    ranks = {l.name: l.rank if l.action == "rewritten" else 16 for l in data_report.layers}
    assert ranks["conv_a"] < ranks["conv_b"]
    assert data_report.totals.macs_after <= 0.75 * data_report.totals.macs_before + 1

    def err(m):
        ref = np.concatenate([run_ort(model, s)[0].ravel() for s in held])
        got = np.concatenate([run_ort(m, s)[0].ravel() for s in held])
        return np.linalg.norm(ref - got) / np.linalg.norm(ref)

    assert err(data_model) < 0.5 * err(weight_model)
    curve = next(l for l in data_report.layers if l.name == "conv_a").output_error_curve
    assert curve is not None and len(curve) == 17


def test_gains_are_cached_on_disk_per_model_data_and_rounding(rng, tmp_path, monkeypatch):
    """A second run on the same model and data loads the gains (no probe runs); other rounding measures again."""
    model = _two_branch_model(rng, 1.0, 1.0, offset=3.0)
    samples = _samples(rng)
    decisions = _decisions(model, samples)
    first, cached = sensitivity.output_gains_cached(model, decisions, samples, 1, tmp_path)
    assert not cached and list(tmp_path.glob("gains-*.npz"))

    def no_probes(*args, **kwargs):
        raise AssertionError("probes ran although the gains were cached")

    real = sensitivity._measure
    monkeypatch.setattr(sensitivity, "_measure", no_probes)
    again, cached = sensitivity.output_gains_cached(model, decisions, samples, 1, tmp_path)
    assert cached and set(again) == set(first)
    assert all(np.array_equal(again[n], first[n]) for n in first)
    monkeypatch.setattr(sensitivity, "_measure", real)
    _, cached = sensitivity.output_gains_cached(model, decisions, samples, 4, tmp_path)
    assert not cached and len(list(tmp_path.glob("gains-*.npz"))) == 2
