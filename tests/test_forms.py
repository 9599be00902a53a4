"""The output form (a conv to r channels per group, then a 1x1 back) and the spatial form (kh x 1 then 1 x kw; in 3D
kd x 1 x 1 then 1 x kh x kw):
data-aware fitting, the choice between forms, undoing them, their MACs and timing micro-models, checked against
onnxruntime and numpy."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from conftest import check_errors, conv_macs_of, expected_kept, rel_err, run_ort
from onebyone import RankPolicy, optimize
from onebyone.latency import micro
from onebyone.models.single_conv import single_conv_model
from onebyone.models.weights import random_weight
from onebyone.passes import factorize, rewrite
from onebyone.passes.analysis import analyze
from onebyone.passes.plan import start


def _subspace(rng, channels, dims, spatial=10):
    """A draw(count) of inputs whose channels span only `dims` fixed directions (plus a per-channel offset): a conv's
    outputs then span at most dims·K directions around their mean."""
    basis = rng.standard_normal((channels, dims))
    offset = rng.standard_normal(channels)

    def draw(count):
        return [{"x": (np.einsum("cd,bdhw->bchw", basis, rng.standard_normal((1, dims, spatial, spatial)))
                       + offset[None, :, None, None]).astype(np.float32)} for _ in range(count)]

    return draw


def test_output_form_is_lossless_on_calibration_data_whose_outputs_span_few_directions(rng):
    """64 outputs of a 3x3 conv over inputs confined to 2 channel directions span at most 18 directions: the output
    form at the numerical rank on those data is exact for such inputs (onnxruntime, fresh inputs), labelled so."""
    w = random_weight(64, 16, (3, 3), rng)
    b = rng.standard_normal(64).astype(np.float32)
    model = single_conv_model((1, 16, 10, 10), w, b)  # no padding: every patch is in the span
    draw = _subspace(rng, 16, 2)
    samples = draw(12)
    optimized, report = optimize(ir.serde.deserialize_model(model), RankPolicy("exact"), verify=False,
                                 forms=("output",), calibration=samples)
    layer = report.layers[0]
    assert layer.action == "rewritten" and layer.form == "output" and layer.lossless, layer
    assert layer.rank <= 18 and layer.lossless_on == "calibration data"
    proto = ir.serde.serialize_model(optimized)
    onnx.checker.check_model(proto, full_check=True)
    for feed in draw(3):  # fresh inputs from the same subspace
        assert rel_err(run_ort(model, feed)[0], run_ort(proto, feed)[0]) <= 1e-5


def test_data_aware_output_form_beats_weight_svd_on_correlated_inputs(rng):
    """With strongly correlated input channels, the principal output subspace (data-aware) leaves less output error
    than the weight's own SVD at the same rank, on held-out inputs from the same distribution (onnxruntime)."""
    w = random_weight(48, 24, (3, 3), rng)
    b = rng.standard_normal(48).astype(np.float32)
    model = single_conv_model((1, 24, 10, 10), w, b, pads=(1, 1, 1, 1))
    mix = rng.standard_normal((24, 24)) * np.exp(-np.arange(24) / 1.5)  # a few channel directions dominate

    def draw(count, seed):
        r = np.random.default_rng(seed)
        return [{"x": np.einsum("cd,bdhw->bchw", mix, r.standard_normal((1, 24, 10, 10))).astype(np.float32)}
                for _ in range(count)]

    calibration, held_out = draw(24, 2), draw(6, 3)
    optimized, report = optimize(ir.serde.deserialize_model(model), RankPolicy("rank", rank=8), verify=False,
                                 forms=("output",), calibration=calibration)
    assert report.layers[0].form == "output" and report.layers[0].rank == 8
    data = ir.serde.serialize_model(optimized)
    weight = ir.serde.deserialize_model(model)  # the weight's own SVD in the output form, inserted by hand
    node = next(n for n in weight.graph if n.op_type == "Conv")
    rewrite.insert(weight.graph, node, factorize.factorize_output_svd(w, 1, 8), rewrite.UniqueNames(weight.graph), {})
    weight = ir.serde.serialize_model(weight)
    errors = {label: max(rel_err(run_ort(model, f)[0], run_ort(m, f)[0]) for f in held_out)
              for label, m in (("weight", weight), ("data", data))}
    assert errors["data"] < 0.7 * errors["weight"], errors


def test_without_data_the_output_form_is_used_only_where_lossless(rng):
    """Weight-only output factors cannot keep the mean of what they discard: without calibration data an
    approximate output-form rewrite is not offered (the conv says why), a lossless one is."""
    from onebyone.models.weights import low_rank_output_weight

    full = single_conv_model((1, 3, 16, 16), random_weight(32, 3, (7, 7), rng), None, strides=(2, 2), pads=(3,) * 4)
    _, report = optimize(ir.serde.deserialize_model(full), RankPolicy("budget", macs=0.5), verify=False,
                         forms=("output",))
    assert report.layers[0].action == "skipped" and "calibration" in report.layers[0].reason
    low = single_conv_model((1, 3, 16, 16), low_rank_output_weight(32, 3, (7, 7), 1, 4, rng), None, strides=(2, 2),
                            pads=(3,) * 4)
    _, report = optimize(ir.serde.deserialize_model(low), RankPolicy("budget", macs=0.5), verify=False,
                         forms=("output",))
    assert report.layers[0].form == "output" and report.layers[0].action == "rewritten"


def test_a_stem_conv_takes_the_output_form_and_its_macs_are_what_onnx_counts(rng):
    """A 7x7 stride-2 conv on 3 uncorrelated channels (a network's stem) can hardly be narrowed on its input side
    (break-even below 3); with both forms and calibration data it gets the output form, and the reported MACs are
    those of the rewritten graph's convs."""
    w = random_weight(32, 3, (7, 7), rng)
    model = single_conv_model((1, 3, 32, 32), w, None, strides=(2, 2), pads=(3, 3, 3, 3))
    calibration = [{"x": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(8)]
    optimized, report = optimize(ir.serde.deserialize_model(model), RankPolicy("budget", macs=0.5), verify=False,
                                 forms=("input", "output"), calibration=calibration)
    layer = report.layers[0]
    assert layer.form == "output" and layer.action == "rewritten", layer
    assert "output" in layer.form_choice and "input" in layer.form_choice
    proto = ir.serde.serialize_model(optimized)
    shapes = {"x": (1, 3, 32, 32)}
    assert conv_macs_of(proto, shapes) == layer.macs_after <= 0.5 * conv_macs_of(model, shapes)
    reduced, expand, bias = _factors(proto)
    assert reduced.shape == (layer.rank, 3, 7, 7) and expand.shape == (32, layer.rank, 1, 1)
    composed = factorize.compose_output(reduced, expand, 1).astype(np.float32)
    x = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
    same = single_conv_model((1, 3, 32, 32), composed, bias, strides=(2, 2), pads=(3, 3, 3, 3))
    assert rel_err(run_ort(same, {"x": x})[0], run_ort(proto, {"x": x})[0]) < 1e-5


def _factors(proto):
    """(R, E, bias of the 1x1 or zeros) of a rewritten single-conv model."""
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    reduce, expand = [n for n in proto.graph.node if n.op_type == "Conv"]
    e = inits[expand.input[1]]
    bias = inits[expand.input[2]] if len(expand.input) > 2 else np.zeros(e.shape[0], np.float32)
    return inits[reduce.input[1]], e, bias


@pytest.mark.parametrize("form,nd", [("output", 2), ("spatial", 2), ("spatial", 3)])
@pytest.mark.parametrize("auto_pad", [None, "SAME_UPPER", "VALID"])
@pytest.mark.parametrize("groups", [1, 2])
def test_rewrite_is_undone_exactly(rng, auto_pad, groups, form, nd):
    """rewrite.insert computes what the composed factors (numpy) and bias say, and rewrite.remove then gives back the
    very same model (the serialized protos are equal)."""
    w = random_weight(8 * groups, 4, (3,) * nd, rng)
    b = rng.standard_normal(8 * groups).astype(np.float32)
    space, pads = (9,) * nd, None if auto_pad else (1, 0, 2)[:nd] + (1, 0, 0)[:nd]
    model = single_conv_model((1, 4 * groups, *space), w, b, strides=(2,) + (1,) * (nd - 1), auto_pad=auto_pad,
                              pads=pads, group=groups)
    work = ir.serde.deserialize_model(model)
    before = ir.serde.serialize_model(work).SerializeToString()
    node = next(n for n in work.graph if n.op_type == "Conv")
    factors = factorize.svd_factors(w, groups, 2, form)
    factors = factorize.Factors(factors.bottleneck, factors.weight, factors.rel_error,
                                rng.standard_normal(8 * groups).astype(np.float32), None, form=form)
    done = rewrite.insert(work.graph, node, factors, rewrite.UniqueNames(work.graph), {})
    changed = ir.serde.serialize_model(work)
    onnx.checker.check_model(changed, full_check=True)
    x = rng.standard_normal((1, 4 * groups, *space)).astype(np.float32)
    (ref,), (got,) = run_ort(model, {"x": x}), run_ort(changed, {"x": x})
    # the composed factors plus the bias shift, computed with numpy from the same factors
    compose = factorize.compose_output if form == "output" else factorize.compose_spatial
    full = compose(factors.bottleneck, factors.weight, groups).astype(np.float32)
    assert full.shape == w.shape
    shifted = single_conv_model((1, 4 * groups, *space), full, b + factors.bias_delta, strides=(2,) + (1,) * (nd - 1),
                                auto_pad=auto_pad, pads=pads, group=groups)
    assert rel_err(run_ort(shifted, {"x": x})[0], got) < 1e-5
    assert not np.allclose(ref, got)
    rewrite.remove(work.graph, done)
    assert ir.serde.serialize_model(work).SerializeToString() == before


@pytest.mark.parametrize("form,kernels", [("output", [[3, 3], [1, 1]]), ("spatial", [[3, 1], [1, 3]]),
                                          ("spatial", [[3, 1, 1], [1, 3, 3]])])
def test_micro_model_has_the_convs_shapes_and_macs(rng, form, kernels):
    """The timing micro-model of each form is its two convs with the conv's input and output, and as many MACs as
    the form's cost model says."""
    nd = len(kernels[0])
    w = random_weight(16, 8, (3,) * nd, rng)
    shape = (1, 8) + (12,) * nd
    model = single_conv_model(shape, w, None, strides=(2,) * nd, pads=(1,) * (2 * nd))
    info = analyze(ir.serde.deserialize_model(model), {"x": shape}, forms=(form,))[0]
    d = start(info)
    assert d.form == form
    pair = micro.pair(info, 3, form=form)
    assert [list(a.ints) for n in pair.graph.node for a in n.attribute if a.name == "kernel_shape"] == kernels
    x = rng.standard_normal(shape).astype(np.float32)
    assert run_ort(pair, {"x": x})[0].shape == run_ort(model, {"x": x})[0].shape == (1, 16) + (6,) * nd
    assert d.macs_at(3) == conv_macs_of(pair, {"x": shape})


def test_a_separable_depthwise_blur_is_split_losslessly(rng):
    """A depthwise 5x5 Gaussian blur (one input channel per group: the input form cannot narrow it) is an outer
    product per channel: the spatial form at rank 1 is lossless (5 + 5 taps instead of 25), onnxruntime agrees."""
    g1 = np.exp(-0.5 * (np.arange(5) - 2.0) ** 2)
    kernel = np.outer(g1, g1 * np.array([1.0, 2.0, 3.0, 2.0, 1.0])) / 25
    w = np.stack([kernel * (1 + c) for c in range(6)])[:, None].astype(np.float32)  # [6, 1, 5, 5]
    model = single_conv_model((1, 6, 20, 20), w, None, pads=(2, 2, 2, 2), group=6)
    optimized, report = optimize(ir.serde.deserialize_model(model), RankPolicy("exact"), verify=False,
                                 forms=("input", "output", "spatial"))
    layer = report.layers[0]
    assert layer.form == "spatial" and layer.lossless and layer.rank == 1, layer
    proto = ir.serde.serialize_model(optimized)
    onnx.checker.check_model(proto, full_check=True)
    assert conv_macs_of(proto, {"x": (1, 6, 20, 20)}) == layer.macs_after == layer.macs_before * 10 // 25
    x = rng.standard_normal((1, 6, 20, 20)).astype(np.float32)
    assert rel_err(run_ort(model, {"x": x})[0], run_ort(proto, {"x": x})[0]) <= 1e-5


def test_data_aware_spatial_form_is_no_worse_than_weight_svd_on_held_out_inputs(rng):
    """With correlated input channels, the data-aware spatial factors (whitened, refitted, chosen on held-out
    calibration samples) leave less output error than the weight's own spatial SVD at the same rank on fresh inputs."""
    w = random_weight(16, 12, (3, 5), rng)
    b = rng.standard_normal(16).astype(np.float32)
    model = single_conv_model((1, 12, 12, 12), w, b, pads=(1, 2, 1, 2))
    mix = rng.standard_normal((12, 12)) * np.exp(-np.arange(12) / 1.5)
    offset = rng.standard_normal(12)[None, :, None, None]

    def draw(count, seed):
        r = np.random.default_rng(seed)
        return [{"x": (np.einsum("cd,bdhw->bchw", mix, r.standard_normal((1, 12, 12, 12))) + offset).astype(np.float32)}
                for _ in range(count)]

    optimized, report = optimize(ir.serde.deserialize_model(model), RankPolicy("rank", rank=6), verify=False,
                                 forms=("spatial",), calibration=draw(24, 2))
    assert report.layers[0].form == "spatial" and report.layers[0].rank == 6
    weight, _ = optimize(ir.serde.deserialize_model(model), RankPolicy("rank", rank=6), verify=False, forms=("spatial",))
    data, weight = ir.serde.serialize_model(optimized), ir.serde.serialize_model(weight)
    held = draw(6, 3)
    errors = {label: max(rel_err(run_ort(model, f)[0], run_ort(m, f)[0]) for f in held)
              for label, m in (("weight", weight), ("data", data))}
    assert errors["data"] < 0.7 * errors["weight"], errors


def test_a_budget_with_other_forms_is_checked_against_fewer_forms_at_the_same_budget(rng):
    """A data-aware budget whose rewrite used the output or spatial form is compared on held-out calibration samples
    with the rewrites without the output form and with the input form alone (and weight-only); the kept model is the
    one with the smallest error there, measured again here independently with onnxruntime."""
    from onebyone.calibrated import search
    from onebyone.models import generators

    model = generators.resnet_bottleneck(size=32, width=8, blocks=(1, 1), classes=10)
    calib = [{"input": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(8)]
    optimized, report = optimize(ir.serde.deserialize_model(model), RankPolicy("budget", macs=0.6), verify=False,
                                 forms=("input", "output", "spatial"), calibration=calib)
    check = report.method_check
    errors = check_errors(check)
    assert {"data", "weight", search.INPUT_ONLY} <= set(errors), check
    assert check["kept"] == expected_kept(check)
    held = calib[3::4]
    proto = ir.serde.serialize_model(optimized)
    num = sum(float(np.sum((run_ort(model, f)[0] - run_ort(proto, f)[0]) ** 2)) for f in held)
    den = sum(float(np.sum(run_ort(model, f)[0] ** 2)) for f in held)
    assert np.sqrt(num / den) == pytest.approx(errors[check["kept"]], rel=1e-3)


def test_the_narrower_rewrites_follow_the_forms_used():
    """Which fewer-forms rewrites a budget is checked against, from the forms its rewrite used."""
    from types import SimpleNamespace

    from onebyone.calibrated.search import INPUT_ONLY, INPUT_SIDE, _narrower

    def used(*forms):
        return SimpleNamespace(layers=[SimpleNamespace(form=f, action="rewritten") for f in forms])

    every = ("input", "output", "spatial")
    assert _narrower(every, used("input", "output", "spatial")) == [(INPUT_SIDE, ("input", "spatial")),
                                                                    (INPUT_ONLY, ("input",))]
    assert _narrower(every, used("input", "spatial")) == [(INPUT_ONLY, ("input",))]
    assert _narrower(("input", "output"), used("output")) == [(INPUT_SIDE, ("input",))]
    assert _narrower(every, used("input")) == []
    assert _narrower(("output",), used("output")) == []


def test_a_budget_that_used_the_pointwise_form_is_checked_against_the_input_form_at_the_same_cost():
    """A budget whose rewrite used the pointwise form is checked against the input form alone; that rewrite keeps the
    1x1 convs whole, so its budget fraction over the remaining (kxk) convs spends the same total: 0.5 of 100 MACs with
    60 of them in 1x1 convs leaves the kxk convs 1 - 0.5·100/40 < 0, impossible (None); 0.8 leaves them 0.5."""
    from types import SimpleNamespace

    from onebyone.calibrated.search import INPUT_ONLY, _narrower, equal_cost

    def report(*layers):
        return SimpleNamespace(layers=[SimpleNamespace(form=f, action="rewritten", numerical_rank=1, macs_before=m,
                                                       time_before_ms=m / 10) for f, m in layers])

    used = report(("input", 40), ("pointwise", 60))
    assert _narrower(("input", "pointwise"), used) == [(INPUT_ONLY, ("input",))]
    assert _narrower(("pointwise",), report(("pointwise", 60))) == []
    assert equal_cost(RankPolicy("budget", macs=0.5), used, ("input",)) is None
    assert equal_cost(RankPolicy("budget", macs=0.8), used, ("input",)).macs == pytest.approx(0.5)
    assert equal_cost(RankPolicy("budget", time=0.8), used, ("input",)).time == pytest.approx(0.5)
    same = RankPolicy("budget", macs=0.5)
    assert equal_cost(same, used, ("input", "pointwise")) is same
    assert equal_cost(same, report(("input", 40), ("output", 60)), ("input",)) is same


def test_a_mac_budget_chooses_form_and_rank_together(rng):
    """The budget is offered every form's ranks, not only the form preferred before it: a conv whose weight has input
    rank 2 (lossless in the input form at 2·(C + 9N) MACs per pixel, within 0.2 of its MACs) but was preferred in the
    spatial form (which needs rank 6, more than 0.2 of its MACs, to be lossless) gets the input form at rank 2 and
    says why; with only the spatial form's ranks the same budget gives a lossy rewrite."""
    from onebyone.passes.policies import budget

    c = n = 16
    w = np.einsum("rc,rnhw->nchw", rng.standard_normal((2, c)), rng.standard_normal((2, n, 3, 3))).astype(np.float32)
    model = ir.serde.deserialize_model(single_conv_model((1, c, 10, 10), w, pads=(1, 1, 1, 1)))
    info = analyze(model, {"x": (1, c, 10, 10)}, forms=("input", "spatial"), with_data=False)[0]
    policy = RankPolicy("budget", macs=0.2)
    d = start(info)
    d.form = "spatial"
    policy.assign([d])
    assert (d.form, d.rank, d.lossless) == ("input", 2, True)
    assert d.macs_at(2) <= 0.2 * info.macs
    assert d.form_choice.startswith("chosen by the MAC budget 0.2 over spatial")

    only_spatial = start(info)
    only_spatial.form = "spatial"
    keys, errors, costs = policy._options(only_spatial, None)
    spatial = [k for k, (f, _) in enumerate(keys) if f == "spatial" and costs[k] <= 0.2 * info.macs]
    assert spatial and min(errors[spatial]) > 0.1
    assert budget._gain_at(np.array([1.0, 0.5, 0.0]), np.array([1.0, 2.0, 3.0]), np.array([0.25])) == pytest.approx([2.5])


@pytest.mark.parametrize("kernel,strides,dilations,pads,groups", [
    ((3, 5), (2, 1), (1, 2), (1, 2, 0, 3), 1),
    ((3, 3, 2), (1, 2, 1), (2, 1, 1), (2, 1, 0, 1, 0, 1), 1),
    ((3, 3, 3), (2, 2, 1), (1, 1, 1), "SAME_UPPER", 2),
    ((2, 3, 3), (1, 1, 2), (1, 2, 1), "VALID", 2),
])
def test_spatial_fit_statistics_give_the_rewritten_convs_error(rng, kernel, strides, dilations, pads, groups):
    """The spatial fit's statistics (the first conv's outputs over x̂, taken in patches of the other axes with their
    strides, dilations and pads) score a pair of factors at exactly the held-out output error onnxruntime measures
    for the conv composed from them, in 2D and 3D, with groups and auto_pad."""
    from onebyone.calibrated import fitting, spatial_fitting
    from onebyone.calibrated.holdout import is_held_out

    nd = len(kernel)
    w = random_weight(6, 4 // groups, kernel, rng)
    b = rng.standard_normal(6).astype(np.float32)
    shape = (1, 4) + (7, 8, 6)[:nd]
    geometry = dict(strides=strides, dilations=dilations, group=groups, **(
        {"auto_pad": pads} if isinstance(pads, str) else {"pads": pads}))
    model = single_conv_model(shape, w, b, **geometry)
    info = analyze(ir.serde.deserialize_model(model), {"x": shape}, forms=("spatial",))[0]
    d = start(info)
    xs = [rng.standard_normal(shape).astype(np.float32) for _ in range(8)]
    ys = [run_ort(model, {"x": x})[0] for x in xs]
    factors = factorize.factorize_spatial_svd(w, groups, 2)
    _, held = spatial_fitting.first_outputs_equations(d, factors.bottleneck, fitting.ConvData(xs, None, ys),
                                                      b.astype(np.float64))
    predicted = fitting.output_error(held, factors.weight, np.zeros(6))
    full = factorize.compose_spatial(factors.bottleneck, factors.weight, groups).astype(np.float32)
    composed = single_conv_model(shape, full, b, **geometry)
    held_out = [i for i in range(8) if is_held_out(i, 8)]
    num = sum(float(np.sum((ys[i].astype(np.float64) - run_ort(composed, {"x": xs[i]})[0]) ** 2)) for i in held_out)
    den = sum(float(np.sum(ys[i].astype(np.float64) ** 2)) for i in held_out)
    assert held_out and 0.05 < predicted == pytest.approx(np.sqrt(num / den), rel=1e-4)


def test_data_aware_3d_spatial_form_beats_weight_svd_on_correlated_inputs(rng):
    """A 3D conv ((1+2)D: kd x 1 x 1 then 1 x kh x kw) fitted on calibration data with correlated channels leaves
    less output error on fresh inputs than the weight's own spatial SVD at the same rank, and is written as the two
    convs onnxruntime runs."""
    w = random_weight(12, 10, (3, 3, 3), rng)
    b = rng.standard_normal(12).astype(np.float32)
    model = single_conv_model((1, 10, 6, 7, 7), w, b, pads=(1, 1, 1, 1, 1, 1))
    mix = rng.standard_normal((10, 10)) * np.exp(-np.arange(10) / 1.5)

    def draw(count, seed):
        r = np.random.default_rng(seed)
        return [{"x": np.einsum("cd,bdthw->bcthw", mix, r.standard_normal((1, 10, 6, 7, 7))).astype(np.float32)}
                for _ in range(count)]

    optimized, report = optimize(ir.serde.deserialize_model(model), RankPolicy("rank", rank=5), verify=False,
                                 forms=("spatial",), calibration=draw(24, 2))
    layer = report.layers[0]
    assert layer.form == "spatial" and layer.rank == 5 and layer.action == "rewritten", layer
    weight, _ = optimize(ir.serde.deserialize_model(model), RankPolicy("rank", rank=5), verify=False,
                         forms=("spatial",))
    data, weight = ir.serde.serialize_model(optimized), ir.serde.serialize_model(weight)
    onnx.checker.check_model(data, full_check=True)
    assert [list(a.ints) for n in data.graph.node for a in n.attribute if a.name == "kernel_shape"] == [[3, 1, 1],
                                                                                                       [1, 3, 3]]
    assert conv_macs_of(data, {"x": (1, 10, 6, 7, 7)}) == layer.macs_after
    held = draw(6, 3)
    errors = {label: max(rel_err(run_ort(model, f)[0], run_ort(m, f)[0]) for f in held)
              for label, m in (("weight", weight), ("data", data))}
    assert errors["data"] < 0.7 * errors["weight"], errors
