"""Gemm and MatMul with a constant weight under the pointwise form (passes.matrix): exact on exactly low-rank
weights for every Gemm attribute and MatMul input rank, skipped with reasons where they are no pointwise layer,
data-aware fits with their bias correction in the Add that follows, undo, timing micro-models and TVM, checked
against onnxruntime and numpy."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import rel_err, run_ort
from test_cli import cli
from onebyone import RankPolicy, optimize
from onebyone.latency import micro
from onebyone.passes import cost, factorize, rewrite
from onebyone.passes.analysis import analyze


def _low_rank(rows, cols, rank, rng):
    return (rng.standard_normal((rows, rank)) @ rng.standard_normal((rank, cols)) / np.sqrt(cols)).astype(np.float32)


def _model(nodes, x_shape, inits, opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "matrix", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.asarray(a, np.float32), n) for n, a in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    if not any(n.op_type == "Reshape" for n in nodes):
        model = onnx.shape_inference.infer_shapes(model)  # the output's shape, for the checker
    return model


def _gemm(rng, k=48, n=40, rank=5, m=3, trans_a=0, trans_b=0, alpha=1.0, beta=1.0, c_shape=(40,)):
    w = _low_rank(n, k, rank, rng)  # [N, K]
    inits = {"B": w if trans_b else w.T}
    inputs = ["x", "B"]
    if c_shape is not None:
        inits["C"] = rng.standard_normal(c_shape)
        inputs.append("C")
    node = helper.make_node("Gemm", inputs, ["y"], name="fc", transA=trans_a, transB=trans_b, alpha=alpha, beta=beta)
    return _model([node], (k, m) if trans_a else (m, k), inits)


def _matmul(rng, x_shape, n=40, rank=5, add=True):
    k = x_shape[-1]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h" if add else "y"], name="fc")]
    inits = {"W": _low_rank(n, k, rank, rng).T}
    if add:
        nodes.append(helper.make_node("Add", ["h", "b"], ["y"]))
        inits["b"] = rng.standard_normal(n)
    return _model(nodes, x_shape, inits)


def _exact(model, rng):
    before = model.SerializeToString()
    optimized, report = optimize(ir.serde.deserialize_model(model), RankPolicy("exact"), forms=("pointwise",),
                                 verify=False)
    assert model.SerializeToString() == before  # the input model is not touched
    proto = ir.serde.serialize_model(optimized)
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["x"] and [o.name for o in proto.graph.output] == ["y"]
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = rng.standard_normal(shape).astype(np.float32)
    return report, rel_err(run_ort(model, {"x": x})[0], run_ort(proto, {"x": x})[0]), proto


@pytest.mark.parametrize("attrs", [
    {}, {"trans_b": 1}, {"trans_a": 1}, {"trans_a": 1, "trans_b": 1, "alpha": 0.5, "beta": 2.0},
    {"c_shape": (1, 40), "beta": -1.5}, {"c_shape": (1,)}, {"c_shape": None, "alpha": 3.0}, {"m": 1},
])
def test_exactly_low_rank_gemm_is_rewritten_losslessly_for_every_attribute(rng, attrs):
    """A Gemm whose weight has rank 5 becomes Gemm(Gemm(A, U, transA), V, C') with the same outputs as onnxruntime's
    original (rel L2 <= 1e-5), labelled lossless, for transA/transB, alpha, beta and every C that is one bias per
    output; MACs per row as the cost model says."""
    report, err, proto = _exact(_gemm(rng, **attrs), rng)
    (layer,) = report.layers
    assert (layer.op, layer.form, layer.action, layer.lossless, layer.rank) == ("Gemm", "pointwise", "rewritten", True, 5)
    assert err <= 1e-5
    assert [n.op_type for n in proto.graph.node] == ["Gemm", "Gemm"]
    assert layer.macs_before == 48 * 40 and layer.macs_after == 5 * (48 + 40)  # per batch item: one row of A


@pytest.mark.parametrize("x_shape", [(3, 48), (2, 7, 48), (2, 3, 4, 48)])
@pytest.mark.parametrize("add", [True, False])
def test_exactly_low_rank_matmul_is_rewritten_losslessly_for_any_input_rank(rng, x_shape, add):
    """MatMul(x, W) with W of rank 5 and x of rank 2, 3 or 4 becomes MatMul(MatMul(x, U), V), exact against
    onnxruntime, with or without the Add of its bias after it (left as it is when lossless)."""
    report, err, proto = _exact(_matmul(rng, x_shape, add=add), rng)
    (layer,) = report.layers
    assert (layer.op, layer.lossless, layer.rank) == ("MatMul", True, 5)
    assert layer.input_shape == [x_shape[0], 48, *(x_shape[1:-1] or (1,))]  # conv layout: [batch, channels, positions]
    assert err <= 1e-5
    assert [n.op_type for n in proto.graph.node][:2] == ["MatMul", "MatMul"]



def _reshaped(rng, x_shape, to, k=48, n=40):
    """x → Reshape to `to` [..., K] → MatMul(W [K, N]) + b: a projection over rows an exporter laid out its way."""
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["flat"]), helper.make_node("MatMul", ["flat", "W"], ["h"],
                                                                                   name="fc"),
             helper.make_node("Add", ["h", "b"], ["y"])]
    model = _model(nodes, x_shape, {"W": _low_rank(n, k, 5, rng).T, "b": rng.standard_normal(n)})
    model.graph.initializer.append(numpy_helper.from_array(np.array(to, np.int64), "shape"))
    return onnx.shape_inference.infer_shapes(model)


@pytest.mark.parametrize("x_shape, to, per_item", [
    ((1, 197, 48), (197, 48), 197),  # a ViT's tokens flattened at batch 1: every row runs for the one item
    ((1, 197, 48), (197, 1, 48), 197),  # ... or kept sequence-first [T, B, E] (torch's attention in-projection)
    ((2, 7, 48), (14, 48), 7),  # batch 2 of 7 tokens: 7 rows per item
    ((1, 64 * 49, 48), (64, 49, 48), 64 * 49),  # a Swin's 64 windows of 49 tokens: the windows are not a batch
    ((8, 3, 4, 4), (8, 48), 1),  # a static batch of 8 flattened for a classifier head: one row per item
    ((1, 100, 48), (100, 48), 100),  # a detector's 100 regions of one image
])
def test_a_matmul_counts_the_rows_of_one_batch_item(rng, x_shape, to, per_item):
    """A MatMul counts all its rows divided by the model's batch (the leading dim of its input) per batch item,
    however the exporter laid them out (before, the leading dim was read as the batch: one token of a flattened or
    sequence-first projection, one window of a Swin): its MACs per item are rows·K·N, the timing micro-models run
    those rows (and hold those MACs), the report's `rows` says so, and the exact rewrite stays exact against
    onnxruntime."""
    model = _reshaped(rng, x_shape, to)
    (info,) = analyze(ir.serde.deserialize_model(model), {"x": x_shape}, forms=("pointwise",))
    assert info.macs == per_item * 48 * 40 and info.spatial_in == info.spatial_out == per_item
    assert info.macs_of("pointwise", 6) == per_item * 6 * (48 + 40)
    x = rng.standard_normal(micro.input_shape(info)).astype(np.float32)
    assert x.shape == (per_item, 48)
    assert run_ort(micro.original(info), {"x": x})[0].shape == (per_item, 40)
    report, err, _ = _exact(model, rng)
    assert report.layers[0].lossless and report.layers[0].macs_before == per_item * 48 * 40 and err <= 1e-5
    assert report.layers[0].rows == per_item  # the report says what the MACs count

def test_layers_that_are_no_pointwise_layer_are_skipped_with_a_reason_or_not_listed(rng):
    """A MatMul of two activations (attention's kind) is not a layer; a batched 3-D weight, a Gemm whose C varies
    along the batch, and a Gemm before opset 11 are skipped with reasons; without the pointwise form no matrix op is
    listed at all."""
    nodes = [helper.make_node("MatMul", ["x", "W3"], ["a"], name="batched"),
             helper.make_node("Reshape", ["a", "shape"], ["a2"]),
             helper.make_node("Gemm", ["a2", "B", "Cm"], ["g"], name="rowbias"),
             helper.make_node("Transpose", ["g"], ["gt"]),
             helper.make_node("MatMul", ["g", "gt"], ["y"], name="activations")]
    inits = {"W3": rng.standard_normal((2, 16, 24)), "shape": np.array([4, 24]), "B": rng.standard_normal((24, 24)),
             "Cm": rng.standard_normal((4, 24))}
    inits_proto = _model(nodes, (2, 2, 16), {k: v for k, v in inits.items() if k != "shape"})
    inits_proto.graph.initializer.append(numpy_helper.from_array(np.array([4, 24], np.int64), "shape"))
    reasons = {i.name: i.skip_reason for i in analyze(ir.serde.deserialize_model(inits_proto), {"x": (2, 2, 16)},
                                                      forms=("pointwise",))}
    assert set(reasons) == {"batched", "rowbias"}
    assert "rank 3" in reasons["batched"] and "varies along the batch" in reasons["rowbias"]
    assert analyze(ir.serde.deserialize_model(inits_proto), {"x": (2, 2, 16)}, forms=("input",)) == []
    old = _gemm(rng)
    old.opset_import[0].version = 10
    (info,) = analyze(ir.serde.deserialize_model(old), {"x": (3, 48)}, forms=("pointwise",))
    assert "opset 11" in info.skip_reason


def _features(rng, count, rows=6, k=64, dims=12, offset=1.0):
    """Inputs whose K features span `dims` directions around a common offset (a layer after an embedding)."""
    basis = rng.standard_normal((dims, k))
    shift = offset * rng.standard_normal(k)
    return [{"x": (rng.standard_normal((rows, dims)) @ basis + shift).astype(np.float32)} for _ in range(count)]


def test_data_aware_matmul_is_lossless_on_calibration_data_and_corrects_the_following_add(rng):
    """A full-rank 64->48 MatMul + Add over features spanning 12 directions (plus an offset): with calibration data it
    is rewritten at rank 13 (the directions and the offset) exactly for fresh inputs of that kind, labelled lossless
    on calibration data; weight-only SVD at that rank is far off."""
    draw = lambda count: _features(np.random.default_rng(3), count)  # noqa: E731 (one basis for all draws)
    model = _model([helper.make_node("MatMul", ["x", "W"], ["h"], name="fc"), helper.make_node("Add", ["b", "h"], ["y"])],
                   (6, 64), {"W": rng.standard_normal((64, 48)), "b": rng.standard_normal(48)})
    calibration, fresh = draw(40)[:32], draw(40)[32:]
    errors = {}
    for cal in (None, calibration):
        optimized, report = optimize(ir.serde.deserialize_model(model), RankPolicy("rank", rank=13),
                                     forms=("pointwise",), calibration=cal, verify=False)
        proto = ir.serde.serialize_model(optimized)
        errors[cal is None] = max(rel_err(run_ort(model, f)[0], run_ort(proto, f)[0]) for f in fresh)
        (layer,) = report.layers
    assert layer.lossless and layer.lossless_on == "calibration data"
    assert errors[False] < 1e-4 < 0.1 < errors[True]


@pytest.mark.parametrize("kind", ["gemm", "matmul+add", "matmul"])
def test_data_aware_rank_cut_beats_weight_only_on_the_model_output(rng, kind):
    """At a rank that loses information (16 of 64 on ReLU features with a decaying spectrum), the data-aware fit's
    model output error on fresh inputs is below weight-only SVD's by a wide margin, for a Gemm, a MatMul with its Add,
    and a MatMul with no bias anywhere (whose fit may then not move the mean). The MatMul's bias correction lands in
    the Add after it (a new constant; the original model keeps its own)."""
    p = rng.standard_normal((16, 64)) * np.exp(-np.arange(64) / 10)
    w = rng.standard_normal((64, 48)) / 8
    head = {"gemm": [helper.make_node("Gemm", ["f", "W", "c"], ["y"], name="fc")],
            "matmul+add": [helper.make_node("MatMul", ["f", "W"], ["h"], name="fc"),
                           helper.make_node("Add", ["h", "c"], ["y"])],
            "matmul": [helper.make_node("MatMul", ["f", "W"], ["y"], name="fc")]}[kind]
    inits = {"P": p, "W": w, **({"c": rng.standard_normal(48)} if kind != "matmul" else {})}
    model = _model([helper.make_node("MatMul", ["x", "P"], ["e"]), helper.make_node("Relu", ["e"], ["f"]), *head],
                   (8, 16), inits)
    draw = lambda n: [{"x": rng.standard_normal((8, 16)).astype(np.float32)} for _ in range(n)]  # noqa: E731
    calibration, fresh = draw(32), draw(6)
    errors = []
    for cal in (None, calibration):
        optimized, _ = optimize(ir.serde.deserialize_model(model), RankPolicy("rank", rank=6), forms=("pointwise",),
                                calibration=cal, verify=False)
        proto = ir.serde.serialize_model(optimized)
        errors.append(np.mean([rel_err(run_ort(model, f)[0], run_ort(proto, f)[0]) for f in fresh]))
    assert errors[1] < 0.6 * errors[0]
    if kind == "matmul+add":
        (add,) = [n for n in proto.graph.node if n.op_type == "Add"]
        assert add.input[1] != "c" and "c" in {i.name for i in model.graph.initializer}


def test_undoing_a_matrix_rewrite_restores_the_graph(rng):
    """rewrite.remove after rewrite.insert gives back the very graph (Gemm attributes and C, MatMul's Add constant
    with a bias correction), serialized byte for byte."""
    for model in (_gemm(rng, trans_a=1, alpha=2.0, beta=0.5), _matmul(rng, (2, 5, 48))):
        work = ir.serde.deserialize_model(model)
        before = ir.serde.serialize_model(work).SerializeToString()
        node = [n for n in work.graph if n.op_type in ("Gemm", "MatMul")][0]
        w = np.ones((40, 48, 1), np.float32) * rng.standard_normal((40, 48, 1)).astype(np.float32)
        f = dataclasses.replace(factorize.factorize_svd(w, 1, 4), bias_delta=rng.standard_normal(40).astype(np.float32))
        done = rewrite.insert(work.graph, node, f, rewrite.UniqueNames(work.graph), {})
        assert len(list(work.graph)) == len(model.graph.node) + 1
        rewrite.remove(work.graph, done)
        assert ir.serde.serialize_model(work).SerializeToString() == before


def test_micro_models_of_a_matrix_layer_run_with_its_shapes_and_count_its_macs(rng):
    """The timing micro-models of a Gemm (transA) and a 3-D MatMul run in onnxruntime on one batch item, the pair's
    products hold the MACs cost.bottleneck_macs counts, and both give the original's output shape."""
    for model, shape in ((_gemm(rng, trans_a=1), (48, 3)), (_matmul(rng, (2, 7, 48)), (2, 7, 48))):
        (info,) = analyze(ir.serde.deserialize_model(model), {"x": shape}, forms=("pointwise",))
        x = rng.standard_normal(micro.input_shape(info)).astype(np.float32)
        before = run_ort(micro.original(info), {"x": x})[0]
        pair = micro.pair(info, 6)
        after = run_ort(pair, {"x": x})[0]
        assert before.shape == after.shape
        mats = {i.name: i.dims for i in pair.graph.initializer if i.name in ("F", "W")}
        rows = int(np.prod(micro.input_shape(info))) // 48
        assert rows * (int(np.prod(mats["F"])) + int(np.prod(mats["W"]))) == cost.bottleneck_macs(
            info.spatial_in, info.spatial_out, 40, 48, 1, 1, 6) * rows // max(info.spatial_in, 1)


def test_a_rewritten_mlp_compiles_with_tvm_and_matches_onnxruntime(tmp_path, rng):
    """A Gemm (transB) and a 3-D MatMul + Add rewritten losslessly compile for this CPU with TVM and give the
    original's outputs."""
    from onebyone.runtime import package, targets

    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"), helper.make_node("Add", ["h", "b1"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]), helper.make_node("Reshape", ["r", "shape"], ["f"]),
             helper.make_node("Gemm", ["f", "W2", "b2"], ["y"], name="fc2", transB=1)]
    model = _model(nodes, (2, 3, 32), {"W1": _low_rank(48, 32, 4, rng).T, "b1": rng.standard_normal(48),
                                       "W2": _low_rank(24, 144, 6, rng), "b2": rng.standard_normal(24)})
    model.graph.initializer.append(numpy_helper.from_array(np.array([2, 144], np.int64), "shape"))
    optimized, report = optimize(ir.serde.deserialize_model(model), RankPolicy("exact"), forms=("pointwise",))
    assert [(l.op, l.lossless) for l in report.layers] == [("MatMul", True), ("Gemm", True)]
    pkg_dir = package.compile_model(optimized, targets.resolve("cpu"), tmp_path / "pkg")
    x = rng.standard_normal((2, 3, 32)).astype(np.float32)
    (got,) = package.load_package(pkg_dir).run({"x": x}).values()
    assert rel_err(run_ort(model, {"x": x})[0], got) < 1e-4


def test_cli_rewrites_a_gemm_with_the_pointwise_form(rng, tmp_path):
    """`onebyone optimize --forms pointwise --policy exact` on a model with an exactly low-rank Gemm writes a verified
    model and a report whose layer says Gemm, pointwise, lossless."""
    src = tmp_path / "gemm.onnx"
    onnx.save(_gemm(rng, trans_b=1), src)
    out, rep = tmp_path / "out.onnx", tmp_path / "r.json"
    cli("optimize", src, "-o", out, "--forms", "pointwise", "--policy", "exact", "--report", rep, check_rc=0)
    (layer,) = json.loads(rep.read_text())["layers"]
    assert (layer["op"], layer["form"], layer["lossless"]) == ("Gemm", "pointwise", True)
    assert out.is_file()


def test_odd_matrix_layers_work_or_are_skipped_or_rejected(rng):
    """A float16 Gemm and a MatMul whose weight is a Constant node behind a dynamic batch are rewritten losslessly
    (verified; the written model keeps the dynamic dim); a QDQ-quantized weight is skipped with the reason; a weight
    that contradicts the input's features is an invalid model (OneByOneError naming the layer)."""
    from onebyone.errors import OneByOneError

    w16 = _low_rank(40, 48, 5, rng).astype(np.float16)
    nodes = [helper.make_node("Gemm", ["x", "W", "C"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "fp16", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [3, 48])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [3, 40])],
                              [numpy_helper.from_array(w16, "W"), numpy_helper.from_array(np.ones(40, np.float16), "C")])
    fp16 = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    fp16.ir_version = 8
    _, report = optimize(ir.serde.deserialize_model(fp16), RankPolicy("exact"), forms=("pointwise",))
    assert report.layers[0].lossless and report.verification["passed"]

    const = helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(_low_rank(48, 40, 4, rng).T, "W"))
    dynamic = _model([const, helper.make_node("MatMul", ["x", "W"], ["y"])], ("B", 7, 40), {})
    optimized, report = optimize(ir.serde.deserialize_model(dynamic), RankPolicy("exact"), {"x": (1, 7, 40)},
                                 forms=("pointwise",))
    assert (report.layers[0].weight_source, report.layers[0].lossless) == ("Constant node", True)
    assert report.verification["passed"]
    assert ir.serde.serialize_model(optimized).graph.input[0].type.tensor_type.shape.dim[0].dim_param == "B"

    qdq = _model([helper.make_node("DequantizeLinear", ["Wq", "s"], ["W"]), helper.make_node("MatMul", ["x", "W"], ["y"])],
                 (2, 40), {"s": np.float32(0.01)})
    qdq.graph.initializer.append(numpy_helper.from_array(rng.integers(-100, 100, (40, 48)).astype(np.int8), "Wq"))
    (info,) = analyze(ir.serde.deserialize_model(qdq), {"x": (2, 40)}, forms=("pointwise",))
    assert "quantized weight" in info.skip_reason

    bad = _model([helper.make_node("MatMul", ["x", "W"], ["y"], name="fc")], (2, 40), {"W": np.ones((30, 8))})
    with pytest.raises(OneByOneError, match="'fc' is invalid: its input has 40 features, the weight expects 30"):
        analyze(ir.serde.deserialize_model(bad), {"x": (2, 40)}, forms=("pointwise",))


def test_a_matmul_inside_an_if_branch_is_skipped_for_being_there():
    """A MatMul in a control-flow body (shapes unknown there) is skipped with the subgraph reason, like a conv."""
    body = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["z"], name="inner")], "then", [],
                             [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
                             [numpy_helper.from_array(np.ones((4, 3), np.float32), "W")])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["z2"])], "else", [],
                              [helper.make_tensor_value_info("z2", TensorProto.FLOAT, None)])
    graph = helper.make_graph([helper.make_node("If", ["c"], ["y"], then_branch=body, else_branch=other)], "m",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4]),
                               helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (info,) = analyze(ir.serde.deserialize_model(model), {"x": (2, 4), "c": ()}, forms=("pointwise",))
    assert info.name == "inner" and "control-flow subgraph" in info.skip_reason
