"""The rewritten graph: valid, interface unchanged, shared/Constant/external weights, odd convs skipped."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import rel_err, run_ort
from onebyone import RankPolicy, optimize
from onebyone.modelio import load_model, save_model
from onebyone.models import generators
from onebyone.models.single_conv import single_conv_model
from onebyone.models.weights import low_rank_weight, random_weight


def _ir(proto: onnx.ModelProto) -> ir.Model:
    return ir.serde.deserialize_model(proto)


def test_shared_weight_keeps_every_user_working(rng):
    w = low_rank_weight(16, 16, (3, 3), 1, 4, rng)
    model = single_conv_model((1, 16, 10, 10), w, pads=(1, 1, 1, 1), shared_weight_convs=3)
    optimized, report = optimize(_ir(model), RankPolicy("exact"), verify=False)
    assert [l.action for l in report.layers] == ["rewritten"] * 3
    proto = ir.serde.serialize_model(optimized)
    # All three convs reuse one pair of factor initializers; the original weight is gone.
    names = [t.name for t in proto.graph.initializer]
    assert "W" not in names and len(names) == 2
    x = rng.standard_normal((1, 16, 10, 10)).astype(np.float32)
    assert rel_err(run_ort(model, {"x": x})[0], run_ort(proto, {"x": x})[0]) < 1e-5


def test_shared_weight_with_a_skipped_user_keeps_the_original_weight(rng):
    """One user is rewritten, another cannot be (its weight input is the same, but it is a ConvTranspose)."""
    w = low_rank_weight(16, 16, (3, 3), 1, 4, rng)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 8, 8])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 16, 10, 10])
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["y"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("ConvTranspose", ["x", "W"], ["z"], name="deconv"),
    ]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y, z], [numpy_helper.from_array(w, "W")]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    optimized, report = optimize(_ir(model), RankPolicy("exact"), verify=False)
    assert report.totals.rewritten == 1
    proto = ir.serde.serialize_model(optimized)
    assert "W" in [t.name for t in proto.graph.initializer]
    feeds = {"x": rng.standard_normal((1, 16, 8, 8)).astype(np.float32)}
    for ref, got in zip(run_ort(model, feeds), run_ort(proto, feeds)):
        assert rel_err(ref, got) < 1e-5


def test_interface_names_and_metadata_are_unchanged():
    model = generators.resnet(low_rank=0.5)
    helper.set_model_props(model, {"author": "me", "license": "x"})
    model.graph.doc_string = "doc"
    optimized, report = optimize(_ir(model), RankPolicy("exact"), verify=False)
    proto = ir.serde.serialize_model(optimized)
    onnx.checker.check_model(proto, full_check=True)
    assert report.totals.rewritten > 0
    assert [(i.name, i.type) for i in proto.graph.input] == [(i.name, i.type) for i in model.graph.input]
    assert [(o.name, o.type) for o in proto.graph.output] == [(o.name, o.type) for o in model.graph.output]
    assert {p.key: p.value for p in proto.metadata_props} == {"author": "me", "license": "x"}
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"  # dynamic batch stays dynamic
    node_names = [n.name for n in proto.graph.node]
    assert len(node_names) == len(set(node_names))
    assert all(n.name for n in proto.graph.node)
    value_names = [o for n in proto.graph.node for o in n.output] + [t.name for t in proto.graph.initializer]
    assert len(value_names) == len(set(value_names))
    assert any(n.endswith("/bottleneck") for n in node_names)


def test_unnamed_convs_get_readable_unique_names(rng):
    model = single_conv_model((1, 8, 6, 6), low_rank_weight(8, 8, (3, 3), 1, 2, rng))
    model.graph.node[0].name = ""
    optimized, report = optimize(_ir(model), RankPolicy("exact"), verify=False)
    proto = ir.serde.serialize_model(optimized)
    assert report.layers[0].name == "Conv_0"
    assert sorted(n.name for n in proto.graph.node) == ["Conv_0", "Conv_0/bottleneck"]


@pytest.mark.parametrize("opset", [9, 11, 13, 17, 21])
def test_opsets(opset, rng):
    model = generators.vgg(low_rank=0.5, opset=opset)
    optimized, report = optimize(_ir(model), RankPolicy("exact"))
    assert report.totals.rewritten == report.totals.lossless > 0
    assert report.verification["passed"]
    assert ir.serde.serialize_model(optimized).opset_import[0].version == opset


def test_skip_reasons(rng):
    """Depthwise, 1x1, non-constant and quantized weights, and full-rank weights are skipped, each with a reason."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 8])
    wq = helper.make_tensor_value_info("wdyn", TensorProto.FLOAT, [8, 8, 3, 3])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ["a", "b", "c", "d", "e"]]
    inits = [
        numpy_helper.from_array(random_weight(8, 1, (3, 3), rng), "Wdw"),
        numpy_helper.from_array(random_weight(8, 8, (1, 1), rng), "W1"),
        numpy_helper.from_array(random_weight(8, 8, (3, 3), rng), "Wfull"),
        numpy_helper.from_array(rng.integers(-127, 127, (8, 8, 3, 3)).astype(np.int8), "Wq"),
        numpy_helper.from_array(np.float32(0.01), "scale"),
        numpy_helper.from_array(np.int8(0), "zp"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "Wdw"], ["a"], name="depthwise", group=8, pads=[1] * 4),
        helper.make_node("Conv", ["x", "W1"], ["b"], name="pointwise"),
        helper.make_node("Conv", ["x", "wdyn"], ["c"], name="dynamic", pads=[1] * 4),
        helper.make_node("DequantizeLinear", ["Wq", "scale", "zp"], ["Wdq"], name="dq"),
        helper.make_node("Conv", ["x", "Wdq"], ["d"], name="quantized", pads=[1] * 4),
        helper.make_node("Conv", ["x", "Wfull"], ["e"], name="fullrank", pads=[1] * 4),
    ]
    model = helper.make_model(helper.make_graph(nodes, "g", [x, wq], outs, inits), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    _, report = optimize(_ir(model), RankPolicy("exact"), verify=False)
    reasons = {l.name: l.reason for l in report.layers}
    assert all(l.action == "skipped" for l in report.layers)
    assert "depthwise" in reasons["depthwise"]
    assert "1x1" in reasons["pointwise"]
    assert "graph input" in reasons["dynamic"]
    assert "quantized" in reasons["quantized"]
    assert "break-even" in reasons["fullrank"]


def test_dynamic_spatial_dims_need_input_shape(rng):
    from onebyone.errors import OneByOneError

    model = single_conv_model(("N", 8, "H", "W"), low_rank_weight(8, 8, (3, 3), 1, 2, rng), pads=(1, 1, 1, 1))
    with pytest.raises(OneByOneError, match="input_shapes") as info:  # API terms; the CLI says --input-shape
        optimize(_ir(model), RankPolicy("exact"), verify=False)
    assert "--input-shape 'x:1x8xNxN'" in info.value.cli
    with pytest.raises(OneByOneError, match="unknown input name"):
        optimize(_ir(model), RankPolicy("exact"), {"nope": (1, 8, 6, 6)}, verify=False)
    optimized, report = optimize(_ir(model), RankPolicy("exact"), {"x": (1, 8, 6, 6)})
    assert report.totals.rewritten == 1 and report.verification["passed"]
    # The written model stays dynamic: it runs at another resolution too.
    x = rng.standard_normal((2, 8, 11, 5)).astype(np.float32)
    assert rel_err(run_ort(model, {"x": x})[0], run_ort(ir.serde.serialize_model(optimized), {"x": x})[0]) < 1e-5


def test_external_data_stays_external(tmp_path, rng):
    model = generators.resnet(low_rank=0.5)
    src = tmp_path / "in.onnx"
    onnx.save(model, src, save_as_external_data=True, all_tensors_to_one_file=True, location="in.onnx.data", size_threshold=0)
    before = (src.read_bytes(), (tmp_path / "in.onnx.data").read_bytes())
    optimized, report = optimize(load_model(src), RankPolicy("exact"))
    assert report.verification["passed"] and report.totals.rewritten > 0
    out = save_model(optimized, tmp_path / "out.onnx", inputs_to_protect=(str(src),))
    assert (tmp_path / "out.onnx.data").is_file()
    stored = onnx.load(out, load_external_data=False)
    big = [t for t in stored.graph.initializer if np.prod(t.dims) * 4 > 256]  # ir.save's default threshold
    assert big and all(t.data_location == TensorProto.EXTERNAL for t in big)
    assert before == (src.read_bytes(), (tmp_path / "in.onnx.data").read_bytes())
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    import onnxruntime as ort

    ref = ort.InferenceSession(str(src)).run(None, {"input": x})[0]
    got = ort.InferenceSession(str(out)).run(None, {"input": x})[0]
    assert rel_err(ref, got) < 1e-5


def test_pass_runs_in_a_pass_manager_with_onnx_ir_passes():
    from onnx_ir.passes.common import RemoveUnusedNodesPass, ShapeInferencePass

    from onebyone import BottleneckPass

    model = _ir(generators.inception(low_rank=0.5))
    bottleneck = BottleneckPass(RankPolicy("exact"))
    result = ir.passes.PassManager([bottleneck, RemoveUnusedNodesPass(), ShapeInferencePass()])(model)
    assert result.modified
    assert bottleneck.report.totals.rewritten == bottleneck.report.totals.lossless > 0
    mids = [n.outputs[0] for n in result.model.graph if n.name.endswith("/bottleneck")]
    assert mids and all(v.shape is not None for v in mids)


def test_input_model_object_is_not_modified():
    model = _ir(generators.resnet(low_rank=0.5))
    before = ir.serde.serialize_model(model).SerializeToString()
    optimize(model, RankPolicy("exact"))
    assert ir.serde.serialize_model(model).SerializeToString() == before


def test_excluded_convs_are_left_alone_before_any_budget_is_spent():
    """Convs whose names match an `exclude` glob are skipped with the pattern in the reason (a conv skipped for another
    reason keeps it) under every policy; a budget is then a fraction of the other convs' MACs; the rewrite of the rest
    verifies against onnxruntime; a pattern that matches no conv is an error naming it."""
    from onebyone.errors import OneByOneError

    model = generators.resnet(low_rank=0.5)
    optimized, report = optimize(ir.serde.deserialize_model(model), RankPolicy("exact"), exclude=("conv1", "conv1?"))
    layers = {l.name: l for l in report.layers}
    for name in ("conv1", "conv11", "conv12"):
        assert layers[name].action == "skipped" and "excluded" in layers[name].reason and name in [
            n.name for n in ir.serde.serialize_model(optimized).graph.node]
    assert "1x1" in layers["conv13"].reason and "excluded" not in layers["conv13"].reason
    assert all(layers[n].lossless for n in ("conv2", "conv3", "conv6", "conv7")) and report.verification["passed"]
    _, budget = optimize(ir.serde.deserialize_model(model), RankPolicy("budget", macs=0.6), verify=False,
                         exclude=("conv12",))
    kept = [l for l in budget.layers if l.name != "conv12" and l.kernel != [1, 1]]  # the budget's targets
    (big,) = [l for l in budget.layers if l.name == "conv12"]
    assert big.macs_after == big.macs_before and "excluded" in big.reason
    assert sum(l.macs_after for l in kept) <= 0.6 * sum(l.macs_before for l in kept) + 1
    with pytest.raises(OneByOneError, match="exclude pattern 'head/\\*' \\(--exclude\\) matches no conv"):
        optimize(ir.serde.deserialize_model(model), RankPolicy("exact"), exclude=("head/*",), verify=False)


def _weights_listed_as_inputs(ir_version: int, rng) -> onnx.ModelProto:
    """Two exactly low-rank 3x3 convs (a bias on the first) whose weights are initializers listed as graph inputs,
    as IR 3 required and older exporters (keep_initializers_as_inputs) write."""
    arrays = {"W1": low_rank_weight(16, 16, (3, 3), 1, 4, rng), "B1": rng.standard_normal(16).astype(np.float32),
              "W2": low_rank_weight(16, 16, (3, 3), 1, 4, rng)}
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["a"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Conv", ["b", "W2"], ["y"], name="c2", pads=[1, 1, 1, 1])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 10, 10])]
    inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(a.shape)) for n, a in arrays.items()]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 10, 10])
    inits = [numpy_helper.from_array(a, n) for n, a in arrays.items()]
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, [y], inits),
                              opset_imports=[helper.make_opsetid("", 8)])
    model.ir_version = ir_version
    return model


def test_initializers_listed_as_inputs_are_constants_under_ir3_and_overridable_after(rng):
    """IR < 4: such initializers are constants (onnxruntime does not let them be fed), so both convs are rewritten,
    data-aware too, and the written model (IR 4) no longer lists them as inputs; the caller's model is untouched.
    IR >= 4: they are defaults a caller may override, so the convs are skipped with a reason that names
    --constant-initializers, until ConstantInitializersPass makes them constants."""
    from onebyone.passes.initializer_inputs import ConstantInitializersPass
    from onebyone.tables import totals_line

    feeds = {"x": rng.standard_normal((1, 16, 10, 10)).astype(np.float32)}
    old = _weights_listed_as_inputs(3, rng)
    given = _ir(old)
    before = ir.serde.serialize_model(given).SerializeToString()
    calib = [{"x": rng.standard_normal((1, 16, 10, 10)).astype(np.float32)} for _ in range(8)]
    for calibration in (None, calib):
        optimized, report = optimize(given, RankPolicy("exact"), calibration=calibration, verify=False)
        assert [(l.action, l.lossless) for l in report.layers] == [("rewritten", True)] * 2
        proto = ir.serde.serialize_model(optimized)
        onnx.checker.check_model(proto, full_check=True)
        assert proto.ir_version >= 4 and [i.name for i in proto.graph.input] == ["x"]
        assert rel_err(run_ort(old, feeds)[0], run_ort(proto, feeds)[0]) < 1e-5
    assert ir.serde.serialize_model(given).SerializeToString() == before

    new = _weights_listed_as_inputs(7, rng)
    _, report = optimize(_ir(new), RankPolicy("exact"), verify=False)
    assert [l.action for l in report.layers] == ["skipped"] * 2
    assert all("--constant-initializers" in l.reason for l in report.layers)
    assert "note: 2 conv(s) read weights that are graph inputs with default initializers" in totals_line(report)
    model = _ir(new)
    assert ConstantInitializersPass()(model).modified
    optimized, report = optimize(model, RankPolicy("exact"), verify=False)
    assert report.totals.rewritten == 2
    proto = ir.serde.serialize_model(optimized)
    assert [i.name for i in proto.graph.input] == ["x"]
    assert rel_err(run_ort(new, feeds)[0], run_ort(proto, feeds)[0]) < 1e-5
