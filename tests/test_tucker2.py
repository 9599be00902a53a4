"""The Tucker-2 form (a 1x1 squeeze to r1 channels per group, the kernel to r2, a 1x1 back to N): HOOI against a
numpy HOSVD, exact rewrites, data-aware fitting, undo, MACs and the timing micro-model, checked against onnxruntime
and numpy."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from conftest import conv_macs_of, rel_err, run_ort
from onebyone import RankPolicy, optimize
from onebyone.latency import micro
from onebyone.models.single_conv import single_conv_model
from onebyone.models.weights import low_rank_tucker2_weight, random_weight
from onebyone.passes import factorize, rewrite
from onebyone.passes.analysis import analyze
from onebyone.passes.plan import start


def _hosvd_error(w: np.ndarray, r1: int, r2: int) -> float:
    """Relative error of the truncated HOSVD of w [N, C, *k] at ranks (r1, r2), computed with numpy alone."""
    n, c = w.shape[:2]
    w3 = w.reshape(n, c, -1).astype(np.float64)
    v = np.linalg.svd(w3.transpose(1, 0, 2).reshape(c, -1))[0][:, :r1]
    u = np.linalg.svd(w3.reshape(n, -1))[0][:, :r2]
    approx = np.einsum("ns,sk,kcx->ncx", u, u.T, np.einsum("ncx,cr,dr->ndx", w3, v, v))
    return float(np.linalg.norm(w3 - approx) / np.linalg.norm(w3))


def test_hooi_is_exact_on_low_multilinear_rank_and_no_worse_than_hosvd(rng):
    """A weight of multilinear ranks (5, 10) is recovered to float precision; on a random weight HOOI's error is at
    most the truncated HOSVD's, and the factors compose back to what their error says."""
    low = low_rank_tucker2_weight(48, 24, (3, 3), 1, 10, rng)  # ranks (5, 10): both sides in proportion
    f = factorize.factorize_tucker2(low, 1, 10)
    assert f.ranks == (5, 10) and f.rel_error < 1e-6
    w = random_weight(32, 24, (3, 3), rng)
    for rank in (8, 16, 24):
        f = factorize.factorize_tucker2(w, 1, rank)
        r1, r2 = f.ranks
        assert f.rel_error <= _hosvd_error(w, r1, r2) + 1e-9
        composed = factorize.compose_output(factorize.compose(f.bottleneck, f.weight, 1), f.expand, 1)
        assert np.linalg.norm(composed - w) / np.linalg.norm(w) == pytest.approx(f.rel_error, rel=1e-4)


@pytest.mark.parametrize("groups", [1, 2])
def test_a_two_sided_low_rank_conv_is_rewritten_losslessly_in_three_convs(rng, groups):
    """A strided conv low-rank on both channel sides: under the exact policy the Tucker-2 form is the cheapest
    lossless one; the rewrite has three convs, onnxruntime matches to 1e-5, and the MACs are what ONNX counts."""
    w = low_rank_tucker2_weight(48 * groups, 24, (3, 3), groups, 10, rng)
    b = rng.standard_normal(48 * groups).astype(np.float32)
    model = single_conv_model((1, 24 * groups, 17, 17), w, b, strides=(2, 2), pads=(1, 1, 1, 1), group=groups)
    optimized, report = optimize(ir.serde.deserialize_model(model), RankPolicy("exact"), verify=False,
                                 forms=("input", "output", "tucker2"))
    layer = report.layers[0]
    assert (layer.form, layer.lossless, layer.rank, layer.ranks) == ("tucker2", True, 10, [5, 10]), layer
    assert "lossless at the fewest MACs" in layer.form_choice
    proto = ir.serde.serialize_model(optimized)
    onnx.checker.check_model(proto, full_check=True)
    assert [n.op_type for n in proto.graph.node] == ["Conv", "Conv", "Conv"]
    x = rng.standard_normal((1, 24 * groups, 17, 17)).astype(np.float32)
    assert rel_err(run_ort(model, {"x": x})[0], run_ort(proto, {"x": x})[0]) <= 1e-5
    shapes = {"x": (1, 24 * groups, 17, 17)}
    assert conv_macs_of(proto, shapes) == layer.macs_after < layer.macs_before == conv_macs_of(model, shapes)


def test_data_aware_tucker2_beats_hooi_on_correlated_inputs(rng):
    """With strongly correlated input channels the data-aware Tucker-2 factors leave less output error than the
    weight's own HOOI at the same ranks, on held-out inputs from the same distribution (onnxruntime)."""
    w = random_weight(32, 32, (3, 3), rng)
    b = rng.standard_normal(32).astype(np.float32)
    model = single_conv_model((1, 32, 10, 10), w, b, pads=(1, 1, 1, 1))
    mix = rng.standard_normal((32, 32)) * np.exp(-np.arange(32) / 2.0)
    offset = rng.standard_normal(32)[None, :, None, None]

    def draw(count, seed):
        r = np.random.default_rng(seed)
        return [{"x": (np.einsum("cd,bdhw->bchw", mix, r.standard_normal((1, 32, 10, 10))) + offset).astype(np.float32)}
                for _ in range(count)]

    optimized, report = optimize(ir.serde.deserialize_model(model), RankPolicy("rank", rank=10), verify=False,
                                 forms=("tucker2",), calibration=draw(24, 2))
    layer = report.layers[0]
    assert (layer.form, layer.ranks) == ("tucker2", [10, 10]) and layer.fit, layer
    weight = ir.serde.deserialize_model(model)  # the weight's own HOOI, inserted by hand
    node = next(n for n in weight.graph if n.op_type == "Conv")
    rewrite.insert(weight.graph, node, factorize.factorize_tucker2(w, 1, 10), rewrite.UniqueNames(weight.graph), {})
    held = draw(6, 3)
    errors = {label: max(rel_err(run_ort(model, f)[0], run_ort(m, f)[0]) for f in held)
              for label, m in (("weight", ir.serde.serialize_model(weight)), ("data", ir.serde.serialize_model(optimized)))}
    assert errors["data"] < 0.7 * errors["weight"], errors


@pytest.mark.parametrize("auto_pad", [None, "SAME_UPPER", "VALID"])
@pytest.mark.parametrize("groups", [1, 2])
def test_tucker2_rewrite_is_undone_exactly(rng, auto_pad, groups):
    """rewrite.insert computes what the composed factors (numpy) and the bias shift say, and rewrite.remove then
    gives back the very same model."""
    w = random_weight(12 * groups, 8, (3, 3), rng)
    b = rng.standard_normal(12 * groups).astype(np.float32)
    kw = dict(strides=(2, 1), auto_pad=auto_pad, pads=None if auto_pad else (1, 0, 1, 2), group=groups)
    model = single_conv_model((1, 8 * groups, 9, 9), w, b, **kw)
    work = ir.serde.deserialize_model(model)
    before = ir.serde.serialize_model(work).SerializeToString()
    node = next(n for n in work.graph if n.op_type == "Conv")
    f = factorize.factorize_tucker2(w, groups, 6)
    f = factorize.Factors(f.bottleneck, f.weight, f.rel_error, rng.standard_normal(12 * groups).astype(np.float32),
                          form="tucker2", expand=f.expand)
    done = rewrite.insert(work.graph, node, f, rewrite.UniqueNames(work.graph), {})
    changed = ir.serde.serialize_model(work)
    onnx.checker.check_model(changed, full_check=True)
    full = factorize.compose_output(factorize.compose(f.bottleneck, f.weight, groups), f.expand, groups)
    same = single_conv_model((1, 8 * groups, 9, 9), full.astype(np.float32), b + f.bias_delta, **kw)
    x = rng.standard_normal((1, 8 * groups, 9, 9)).astype(np.float32)
    assert rel_err(run_ort(same, {"x": x})[0], run_ort(changed, {"x": x})[0]) < 1e-5
    rewrite.remove(work.graph, done)
    assert ir.serde.serialize_model(work).SerializeToString() == before


def test_tucker2_micro_model_has_three_convs_and_the_cost_models_macs(rng):
    """The timing micro-model is the squeeze, the kernel and the expansion with the conv's input and output shapes,
    and as many MACs as the form's cost model says."""
    model = single_conv_model((1, 16, 12, 12), random_weight(32, 16, (3, 3), rng), None, strides=(2, 2),
                              pads=(1, 1, 1, 1))
    info = analyze(ir.serde.deserialize_model(model), {"x": (1, 16, 12, 12)}, forms=("tucker2",))[0]
    d = start(info)
    pair = micro.pair(info, 12, form="tucker2")
    assert [list(a.ints) for n in pair.graph.node for a in n.attribute if a.name == "kernel_shape"] == [[1, 1], [3, 3],
                                                                                                        [1, 1]]
    x = rng.standard_normal((1, 16, 12, 12)).astype(np.float32)
    assert run_ort(pair, {"x": x})[0].shape == run_ort(model, {"x": x})[0].shape
    assert info.tucker2_ranks(12) == (6, 12)
    assert d.macs_at(12) == conv_macs_of(pair, {"x": (1, 16, 12, 12)})
    assert info.macs_of("tucker2", int(d.break_even) - 1) < info.macs <= info.macs_of("tucker2", int(d.break_even))


def test_tucker2_needs_channels_on_both_sides_and_data_unless_lossless(rng):
    """An RGB stem has too few input channels for the Tucker-2 form (the reason says so); without calibration data an
    approximate Tucker-2 rewrite is not offered, a lossless one is."""
    stem = single_conv_model((1, 3, 16, 16), random_weight(32, 3, (7, 7), rng), None, pads=(3,) * 4)
    layer = analyze(ir.serde.deserialize_model(stem), {"x": (1, 3, 16, 16)}, forms=("tucker2",))[0]
    assert layer.skip_reason and "channels per group on both sides" in layer.skip_reason
    full = single_conv_model((1, 32, 8, 8), random_weight(32, 32, (3, 3), rng), None, pads=(1,) * 4)
    _, report = optimize(ir.serde.deserialize_model(full), RankPolicy("budget", macs=0.5), verify=False,
                         forms=("tucker2",))
    assert report.layers[0].action == "skipped" and "calibration" in report.layers[0].reason
    low = single_conv_model((1, 32, 8, 8), low_rank_tucker2_weight(32, 32, (3, 3), 1, 6, rng), None, pads=(1,) * 4)
    _, report = optimize(ir.serde.deserialize_model(low), RankPolicy("budget", macs=0.5), verify=False,
                         forms=("tucker2",))
    assert (report.layers[0].form, report.layers[0].action) == ("tucker2", "rewritten"), report.layers[0]


def test_a_budget_that_used_tucker2_is_checked_without_it():
    """The fewer-forms rewrites a budget is checked against drop the output-side forms (output, tucker2) it used."""
    from types import SimpleNamespace

    from onebyone.calibrated.search import INPUT_ONLY, _narrower

    def used(*forms):
        return SimpleNamespace(layers=[SimpleNamespace(form=f, action="rewritten") for f in forms])

    assert _narrower(("input", "tucker2"), used("input", "tucker2")) == [("data without the tucker2 form", ("input",))]
    assert _narrower(("input", "output", "spatial", "tucker2"), used("tucker2", "output", "spatial")) == [
        ("data without the output and tucker2 forms", ("input", "spatial")), (INPUT_ONLY, ("input",))]
