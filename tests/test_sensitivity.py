"""Per-conv output gains (passes.sensitivity) and the budget split they steer."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from conftest import run_ort
from onebyone import RankPolicy, optimize
from onebyone.calibrated import moments as calibration
from onebyone.calibrated import probe_walk, sensitivity, whitening
from onebyone.passes import plan
from onebyone.verify.onnxruntime_run import with_outputs
from onebyone.passes.analysis import analyze
from onebyone.passes.rewrite import UniqueNames, insert


def _two_branch_model(rng, scale_a: float, scale_b: float, offset=0.0, softmax: bool = False):
    """out = scale_a * Conv_a(x) + scale_b * Conv_b(x) + offset (with `softmax`: the Softmax of that over the
    channels, whose input is named "logits"), with Conv_a and Conv_b sharing one weight value (but as separate
    initializers), 3x3, 16 -> 16 channels."""
    w = (rng.standard_normal((16, 16, 3, 3)) / 12).astype(np.float32)
    inits = [numpy_helper.from_array(w, "wa"), numpy_helper.from_array(w.copy(), "wb"),
             numpy_helper.from_array(np.float32([scale_a]), "sa"), numpy_helper.from_array(np.float32([scale_b]), "sb"),
             numpy_helper.from_array(np.broadcast_to(np.float32(offset), (1, 16, 12, 12)).copy(), "c")]
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["ya"], name="conv_a", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "wb"], ["yb"], name="conv_b", pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["ya", "sa"], ["za"]),
        helper.make_node("Mul", ["yb", "sb"], ["zb"]),
        helper.make_node("Add", ["za", "zb"], ["s"]),
        helper.make_node("Add", ["s", "c"], ["logits" if softmax else "out"]),
    ] + ([helper.make_node("Softmax", ["logits"], ["out"], axis=1)] if softmax else [])
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


def _top_margins(logits: list[np.ndarray], reference: list[np.ndarray], k: int = 5) -> np.ndarray:
    """[1, classes, H, W] logits per sample as their values at each position's k largest reference classes, centred
    per position (numpy, written apart from verify.logits)."""
    out = []
    for z, r in zip(logits, reference):
        z, r = (np.moveaxis(a[0], 0, -1).reshape(-1, a.shape[1]).astype(np.float64) for a in (z, r))
        top = np.argsort(-r, axis=1)[:, :k]
        picked = np.take_along_axis(z, top, 1)
        out.append(picked - picked.mean(1, keepdims=True))
    return np.concatenate(out)


def test_a_softmax_outputs_gains_are_measured_on_its_top_class_margins(rng):
    """Probabilities near 0 or 1 make a measured gain depend on which samples probe it: behind a Softmax output the
    gain is the relative error of the logits at each row's top 5 classes (centred) over the conv's own, computed
    here at every probe rank from onnxruntime runs of the rewritten model, while the probabilities saturate (channel
    0 far ahead) and give a ratio many times smaller."""
    offset = np.zeros((1, 16, 1, 1), np.float32)
    offset[0, 0] = 30.0
    model = _two_branch_model(rng, 1.0, 1.0, offset=offset, softmax=True)
    samples = _samples(rng)
    decisions = _decisions(model, samples)
    gains = sensitivity.output_gains(model, decisions, samples)
    d = next(d for d in decisions if d.info.name == "conv_a")
    ref = [run_ort(with_outputs(model, ["logits", "ya"]), s) for s in samples]  # [out, logits, ya]
    assert min(float(r[0][:, 0].min()) for r in ref) > 0.99  # saturated
    ranks = [r for r in sensitivity.probe_ranks(d) if r < d.numerical]
    assert len(ranks) > 1
    expected = {}
    for rank in ranks:
        rewritten = model.clone()
        node = next(n for n in rewritten.graph if n.name == "conv_a")
        insert(rewritten.graph, node, probe_walk.probe_factors(d)(rank), UniqueNames(rewritten.graph), {})
        got = [run_ort(with_outputs(rewritten, ["logits", "ya"]), s) for s in samples]
        want, have = (_top_margins([r[1] for r in runs], [r[1] for r in ref]) for runs in (ref, got))
        local = np.linalg.norm(np.concatenate([(g[2] - r[2]).ravel() for g, r in zip(got, ref)]))
        local /= np.linalg.norm(np.concatenate([r[2].ravel() for r in ref]))
        expected[rank] = np.linalg.norm(have - want) / np.linalg.norm(want) / local
        probs = np.linalg.norm(np.concatenate([(g[0] - r[0]).ravel() for g, r in zip(got, ref)]))
        probs /= np.linalg.norm(np.concatenate([r[0].ravel() for r in ref]))
        assert expected[rank] > 10 * probs / local
    for rank in ranks:  # below the top probe a gain may only rise (see output_gains)
        np.testing.assert_allclose(gains["conv_a"][rank], max(expected[rank], expected[ranks[-1]]), rtol=2e-3)


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
    notes, notes_again = {}, {}
    first, cached = sensitivity.output_gains_cached(model, decisions, samples, 1, tmp_path, notes=notes)
    assert not cached and list(tmp_path.glob("gains-*.npz")) and notes["gains_method"]

    def no_probes(*args, **kwargs):
        raise AssertionError("probes ran although the gains were cached")

    real = sensitivity._measure
    monkeypatch.setattr(sensitivity, "_measure", no_probes)
    again, cached = sensitivity.output_gains_cached(model, decisions, samples, 1, tmp_path, notes=notes_again)
    assert cached and set(again) == set(first) and notes_again == notes
    assert all(np.array_equal(again[n], first[n]) for n in first)
    monkeypatch.setattr(sensitivity, "_measure", real)
    _, cached = sensitivity.output_gains_cached(model, decisions, samples, 4, tmp_path)
    assert not cached and len(list(tmp_path.glob("gains-*.npz"))) == 2
