"""ONNX's own backend node tests for Conv (generated from onnx.backend.test.case.node: the onnx wheel ships no
backend/test/data/node) through `optimize`, checked against their stored expected outputs."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import numpy_helper

from onebyone import RankPolicy, optimize
from onebyone.verify.onnxruntime_run import run_samples


def _conv_cases():
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # other operators' case generators warn about overflows
        return [c for c in collect_testcases("Conv") if c.name.startswith("test_")]


CASES = _conv_cases()


def _with_constant_weight(model: onnx.ModelProto, weight: np.ndarray) -> onnx.ModelProto:
    """The same test with W an initializer instead of a graph input (so the pass may consider it)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    kept = [i for i in m.graph.input if i.name != "W"]
    del m.graph.input[:]
    m.graph.input.extend(kept)
    m.graph.initializer.append(numpy_helper.from_array(weight, "W"))
    return m


def test_there_are_conv_backend_cases():
    assert len(CASES) >= 6


@pytest.mark.parametrize("policy", [RankPolicy("exact"), RankPolicy("rank", rank=0.5)], ids=["exact", "rank0.5"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("weight", ["graph input", "initializer"])
def test_backend_conv_case_passes_through_optimize(case, policy, weight):
    for inputs, expected in case.data_sets:
        names = [i.name for i in case.model.graph.input]
        feed = dict(zip(names, inputs))
        model = case.model
        if weight == "initializer":
            model = _with_constant_weight(model, feed.pop("W"))
        optimized, report = optimize(ir.serde.deserialize_model(model), policy, samples=[feed])
        assert report.verification["passed"]
        for layer in report.layers:  # 1 input channel: nothing to reduce, with the reason said
            assert layer.action == "skipped" and layer.reason
        got = run_samples(optimized, [feed])
        out_names = [o.name for o in case.model.graph.output]
        for name, want in zip(out_names, expected):
            np.testing.assert_allclose(got[name][0], want, rtol=case.rtol, atol=case.atol)
