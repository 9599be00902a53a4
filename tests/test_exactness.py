"""Exactly low-rank convs of every shape are rewritten losslessly: onnxruntime outputs match to 1e-5 (kxk convs low-rank
along their input channels in the input form, along their output channels in the output form, 2D and 3D kernels
low-rank as [(c, y), (n, x)] in the spatial form (y the first axis's taps, x the others'), along both channel sides in
the Tucker-2 form, 1x1 convs in the pointwise form)."""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from conftest import conv_macs_of, rel_err, run_ort
from onebyone import RankPolicy, optimize
from onebyone.models.single_conv import single_conv_model
from onebyone.models.weights import (low_rank_output_weight, low_rank_spatial_weight, low_rank_tucker2_weight,
                                     low_rank_weight)
from onebyone.passes.analysis import FORMS, analyze


@st.composite
def conv_cases(draw):
    side = draw(st.sampled_from(["input", "output", "spatial", "tucker2"]))
    nd = draw(st.integers(2 if side == "spatial" else 1, 3))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    wide = side == "tucker2"  # the Tucker-2 form needs TUCKER2_MIN_CHANNELS on both sides
    c_per_group = draw(st.integers(8, 12) if wide else st.integers(3, 8))
    n_per_group = draw(st.integers(8, 12) if wide else st.integers(4, 8))
    kernel = tuple(draw(st.integers(2 if side in ("spatial", "tucker2") else 1, 5 if nd < 3 else 3))
                   for _ in range(nd))  # all 1: pointwise
    strides = tuple(draw(st.sampled_from([1, 1, 2])) for _ in range(nd))
    dilations = tuple(draw(st.sampled_from([1, 1, 2])) for _ in range(nd))
    padding = draw(st.sampled_from(["pads", "pads", "SAME_UPPER", "SAME_LOWER", "VALID", "none"]))
    if padding.startswith("SAME"):
        dilations = (1,) * nd  # onnxruntime does not run SAME auto_pad with dilations
    eff = [d * (k - 1) + 1 for k, d in zip(kernel, dilations)]
    spatial = tuple(draw(st.integers(e, e + (6 if nd < 3 else 3))) for e in eff)
    pads = None
    if padding == "pads":
        pads = tuple(draw(st.integers(0, 2)) for _ in range(2 * nd))
    rank = draw(st.integers(1, max(1, {"input": c_per_group, "output": n_per_group, "spatial": c_per_group,
                                       "tucker2": max(c_per_group, n_per_group)}[side] // 2)))
    return dict(side=side,
        nd=nd, groups=groups, c=c_per_group * groups, n=n_per_group * groups, kernel=kernel, strides=strides,
        dilations=dilations, pads=pads, auto_pad=padding if padding not in ("pads", "none") else None,
        spatial=spatial, rank=rank, bias=draw(st.booleans()),
        weights_as=draw(st.sampled_from(["initializer", "constant"])),
        opset=draw(st.sampled_from([11, 13, 17, 21])), dynamic_batch=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )


def build(case):
    rng = np.random.default_rng(case["seed"])
    g = case["groups"]
    low_rank = {"output": low_rank_output_weight, "spatial": low_rank_spatial_weight,
                "tucker2": low_rank_tucker2_weight}.get(case.get("side"), low_rank_weight)
    w = low_rank(case["n"], case["c"] // g, case["kernel"], g, case["rank"], rng)
    b = rng.standard_normal(case["n"]).astype(np.float32) if case["bias"] else None
    batch = "N" if case["dynamic_batch"] else 2
    model = single_conv_model(
        (batch, case["c"]) + case["spatial"], w, b, strides=case["strides"], dilations=case["dilations"],
        pads=case["pads"], auto_pad=case["auto_pad"], group=g, weights_as=case["weights_as"], opset=case["opset"],
    )
    x = rng.standard_normal((2, case["c"]) + case["spatial"]).astype(np.float32)
    return model, x


def check_exact(case) -> str:
    model, x = build(case)
    optimized, report = optimize(ir.serde.deserialize_model(model), RankPolicy("exact"), verify=False, forms=FORMS)
    layer = report.layers[0]
    pointwise = all(k == 1 for k in case["kernel"])
    side = "pointwise" if pointwise else case.get("side", "input")
    if layer.form != side and layer.action == "rewritten":  # the other form is lossless too, and cheaper, or the
        # weight's own form cannot lower MACs here (a Tucker-2 weight is low-rank on each side: one-sided forms are exact)
        # after any note on other forms; the weight's own form may be one of several the note lists
        assert not pointwise and ("lossless at the fewest MACs" in layer.form_choice or re.search(
            rf"no rank of the [^;]*\b{side} form \(break-even", layer.form_choice)), layer
        if side not in layer.form_choice and side != "tucker2":  # then the weight's own form is not lossless
            # below its break-even here (a strided conv's input-side 1x1 runs at the input resolution)
            (info,) = analyze(ir.serde.deserialize_model(model), {"x": (1, case["c"]) + case["spatial"]}, forms=FORMS)
            assert side not in info.forms or case["rank"] >= info.break_even(side), layer
    proto = ir.serde.serialize_model(optimized)
    onnx.checker.check_model(proto, full_check=True)
    (ref,) = run_ort(model, {"x": x})
    (got,) = run_ort(proto, {"x": x})
    assert got.shape == ref.shape
    if layer.action == "rewritten":
        assert layer.lossless and (layer.rank == case["rank"] or layer.form != side)
        assert rel_err(ref, got) <= 1e-5, layer
        shapes = {"x": (1, case["c"]) + case["spatial"]}
        before, after = conv_macs_of(model, shapes), conv_macs_of(proto, shapes)
        assert after < before
        assert (before, after) == (layer.macs_before, layer.macs_after)
        assert [n.op_type for n in proto.graph.node if n.op_type == "Conv"] == ["Conv"] * (3 if layer.form == "tucker2" else 2)
    else:
        assert "break-even" in layer.reason
        assert np.array_equal(ref, got)
    return f"{side} weight: {layer.form} {layer.action}"


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_cases())
@example({"side": "input", "nd": 3, "groups": 1, "c": 5, "n": 7, "kernel": (1, 1, 2), "strides": (2, 2, 1),
          "dilations": (1, 1, 1), "pads": None, "auto_pad": "VALID", "spatial": (2, 2, 2), "rank": 2, "bias": False,
          "weights_as": "initializer", "opset": 11, "dynamic_batch": False, "seed": 0})  # the output form exact, cheaper
@example({"side": "input", "nd": 2, "groups": 1, "c": 3, "n": 4, "kernel": (1, 2), "strides": (2, 1),
          "dilations": (1, 2), "pads": None, "auto_pad": "VALID", "spatial": (2, 3), "rank": 1, "bias": False,
          "weights_as": "initializer", "opset": 11, "dynamic_batch": False, "seed": 0})  # form_choice opens with a note
@example({"side": "tucker2", "nd": 3, "groups": 1, "c": 8, "n": 8, "kernel": (2, 2, 2), "strides": (2, 2, 2),
          "dilations": (2, 2, 2), "pads": None, "auto_pad": "VALID", "spatial": (4, 4, 4), "rank": 1, "bias": False,
          "weights_as": "initializer", "opset": 11, "dynamic_batch": False, "seed": 0})  # tucker2 second in the note
def test_exact_rewrite_matches_onnxruntime(case):
    event(check_exact(case))


FORM_CASES = [pytest.param(nd, k, side, id=f"{nd}D {name} form")
              for nd in (1, 2, 3)
              for k, side, name in ((3, "input", "input"), (3, "output", "output"), (3, "spatial", "spatial"),
                                    (3, "tucker2", "tucker2"), (1, "input", "pointwise"))
              if side != "spatial" or nd > 1]  # the spatial form splits 2D and 3D kernels


@pytest.mark.parametrize("nd,k,side", FORM_CASES)
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("padding", ["pads", "SAME_UPPER", "SAME_LOWER", "VALID"])
@pytest.mark.parametrize("weights_as", ["initializer", "constant"])
def test_profitable_low_rank_convs_are_rewritten(nd, k, side, groups, padding, weights_as):
    """Wide, low-rank convs are always below break-even: these must be rewritten (not just pass), in their form."""
    case = dict(
        side=side, nd=nd, groups=groups, c=16 * groups, n=16 * groups, kernel=(k,) * nd, strides=(2,) + (1,) * (nd - 1),
        dilations=(1,) * (nd - 1) + (1 if padding.startswith("SAME") else 2,), pads=(1,) * (2 * nd) if padding == "pads" else None,
        auto_pad=None if padding == "pads" else padding, spatial=(9,) * nd, rank=3, bias=True,
        weights_as=weights_as, opset=13, dynamic_batch=True, seed=nd * 10 + groups,
    )
    form = "pointwise" if k == 1 else side
    # a 1D VALID dilated strided conv keeps 3 of 9 positions: the output form (at the output resolution) is cheaper
    # than a squeeze at the input resolution, and exact on a Tucker-2 weight too
    allowed = {f"{form} weight: {f} rewritten" for f in ([form, "output"] if side == "tucker2" else [form])}
    assert check_exact(case) in allowed
