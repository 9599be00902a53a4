"""Streaming calibration: a model walked segment by segment gives the values a whole-model run gives, with only the
frontier kept (in memory or spilled to disk), and the fit's statistics equal a direct computation."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onebyone.calibrated import fitting, whitening
from onebyone.calibrated.stream import Column, SpillFiles, Stream
from onebyone.models import generators
from onebyone.passes.analysis import analyze
from onebyone.passes.plan import start
from onebyone.verify.onnxruntime_run import Probe, session, weights_in_memory


def _samples(rng, count, size=16):
    return [{"input": rng.standard_normal((1, 3, size, size)).astype(np.float32)} for _ in range(count)]


@pytest.mark.parametrize("memory_limit", [2**40, 0], ids=["in memory", "spilled"])
@pytest.mark.parametrize("generator", ["resnet", "detector"])
def test_walking_conv_to_conv_gives_every_conv_input_and_output_of_a_whole_model_run(rng, memory_limit, generator):
    """A resnet (residual adds keep values alive across stops) and a detector (Reshapes whose shapes are
    initializers) walked from conv to conv: each conv's input and output equal onnxruntime's whole-model values;
    spilled columns give the same values and leave no file."""
    model = ir.serde.deserialize_model(generators.GENERATORS[generator](size=16, seed=2))
    samples = _samples(rng, 3)
    convs = [n for n in model.graph if n.op_type == "Conv"]
    names = sorted({n.inputs[0].name for n in convs} | {n.outputs[0].name for n in convs})
    whole = Probe(model, names, "whole", only=True)
    expected = [whole.run(s) for s in samples]
    stream = Stream(model, samples, "test", memory_limit=memory_limit)
    spill_dir = None
    for conv in convs:
        x = stream.advance(conv, capture=[conv.inputs[0].name])[conv.inputs[0].name]
        y = stream.advance(conv, through=True, capture=[conv.outputs[0].name])[conv.outputs[0].name]
        spill_dir = spill_dir or stream._spill.folder
        for i in range(len(samples)):
            np.testing.assert_array_equal(x[i], expected[i][conv.inputs[0].name])
            np.testing.assert_allclose(y[i], expected[i][conv.outputs[0].name], rtol=1e-5, atol=1e-5)
        # only values that a node not yet run reads are kept
        live = {v.name for n in model.graph if id(n) not in stream._done for v in n.inputs if v is not None}
        assert set(stream.state) <= live | {v.name for v in model.graph.inputs}
    assert (stream.peak_in_memory == 0) == (memory_limit == 0)
    outputs = stream.peek([v.name for v in model.graph.outputs])
    reference = Probe(model).by_name(samples)
    for i in range(len(samples)):
        for name, arrays in reference.items():
            np.testing.assert_allclose(outputs[i][name], arrays[i], rtol=1e-5, atol=1e-5)
    stream.close()
    if memory_limit == 0:
        assert spill_dir is not None and not os.path.exists(spill_dir)


@pytest.mark.parametrize("memory_limit", [2**40, 0], ids=["in memory", "spilled"])
def test_a_stream_adopting_another_s_frontier_runs_only_the_rest_of_its_own_model(rng, memory_limit, monkeypatch):
    """A copy of the model, changed after the stop (a later conv's weight scaled), adopts the original stream's
    progress: it runs none of the nodes before the stop, and its outputs equal a whole run of the changed model."""
    model = ir.serde.deserialize_model(generators.GENERATORS["resnet"](size=16, seed=3))
    samples = _samples(rng, 3)
    convs = [n for n in model.graph if n.op_type == "Conv"]
    stop, later = convs[2], convs[-1]
    copy = model.clone()
    index = {id(n): i for i, n in enumerate(copy.graph)}
    originals = list(model.graph)
    changed = list(copy.graph)[originals.index(later)]
    weight = changed.inputs[1].const_value.numpy()
    changed.inputs[1].const_value = ir.tensor(weight * 0.5, name=changed.inputs[1].name)
    first = Stream(model, samples, "original", memory_limit=memory_limit)
    first.advance(stop)
    second = Stream(copy, samples, "copy", memory_limit=memory_limit)
    ran: list[int] = []
    run = Stream._run
    monkeypatch.setattr(Stream, "_run", lambda self, nodes, *rest: (ran.extend(id(n) for n in nodes),
                                                                     run(self, nodes, *rest))[1])
    second.adopt(first, lambda n: originals[index[id(n)]] if id(n) in index else None)
    first.advance(stop, through=True)  # the original stream goes on; the copy keeps the columns it took
    outputs = second.peek([v.name for v in copy.graph.outputs])
    second.advance(None)
    before = {id(n) for n in list(copy.graph)[:originals.index(stop)]}
    assert not before & set(ran)
    reference = Probe(copy).by_name(samples)
    for i in range(len(samples)):
        for name, arrays in reference.items():
            np.testing.assert_allclose(outputs[i][name], arrays[i], rtol=1e-5, atol=1e-5)
    unchanged = Probe(model).by_name(samples)
    assert any(not np.allclose(unchanged[k][0], reference[k][0], atol=1e-4) for k in reference)
    second.close()
    first.close()


def _scalar_shape_model() -> onnx.ModelProto:
    """x -> conv -> Reshape to a shape built from a 0-d value (Gather of Shape(x) with a scalar index, then
    Unsqueeze and Concat, as torch.onnx writes an upsampling to the input's size): the 0-d value is computed before
    the conv and read after it."""
    w = np.random.default_rng(0).standard_normal((4, 4, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "two"], ["h"], axis=0),  # 0-d
        helper.make_node("Conv", ["x", "w"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Unsqueeze", ["h", "zero"], ["h1"]),
        helper.make_node("Concat", ["lead", "h1", "h1"], ["target"], axis=0),
        helper.make_node("Reshape", ["a", "target"], ["y"]),
    ]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(2, np.int64), "two"),
             numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([1, 4], np.int64), "lead")]
    graph = helper.make_graph(nodes, "scalar", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("memory_limit", [2**40, 0], ids=["in memory", "spilled"])
def test_a_0d_value_on_the_frontier_stays_0d(rng, memory_limit):
    """A 0-d value kept across a stop is handed to the next segment as 0-d (it came back 1-d, and onnxruntime
    refused the segment: torch.onnx exports of DeepLabV3 and FCN)."""
    model = ir.serde.deserialize_model(_scalar_shape_model())
    samples = [{"x": rng.standard_normal((1, 4, 8, 8)).astype(np.float32)} for _ in range(2)]
    conv = next(n for n in model.graph if n.op_type == "Conv")
    with Stream(model, samples, "test", memory_limit=memory_limit) as stream:
        stream.advance(conv)
        assert stream.state["h"][0].shape == () and stream.state["h"][1].shape == ()
        got = stream.peek(["y"])
    reference = Probe(model).by_name(samples)["y"]
    for i in range(len(samples)):
        np.testing.assert_allclose(got[i]["y"], reference[i], rtol=1e-5, atol=1e-5)


def test_a_dropped_spilled_column_gives_its_file_to_the_next(rng):
    """A spilled column's file is written over by the next spilled column once the first is dropped, and the second
    reads back its own arrays (shorter than what the file held); a column takes the smallest free file that holds
    its size (else the largest); closing the pool removes the folder."""
    pool = SpillFiles()
    first = Column(2, pool)
    big = [rng.standard_normal((4, 64)).astype(np.float32) for _ in range(2)]
    for i, a in enumerate(big):
        first[i] = a
    np.testing.assert_array_equal(first[1], big[1])
    used = first._file
    del first
    second = Column(3, pool)
    assert second._file is used
    small = [rng.standard_normal((2, 3)).astype(np.float64) for _ in range(3)]
    for i, a in enumerate(small):
        second[i] = a
    for i, a in enumerate(small):
        np.testing.assert_array_equal(second[i], a)
    assert Column(1, pool)._file is not used  # in use: a new file
    big, small = Column(1, pool), Column(1, pool)
    big[0], small[0] = np.zeros(1000, np.float32), np.zeros(10, np.float32)
    big_file, small_file = big._file, small._file
    del big, small
    assert Column(1, pool, size=40)._file is small_file  # the smallest file that holds it
    assert Column(1, pool, size=2000)._file is big_file  # none holds it: the largest, which grows least
    folder = pool.folder
    assert folder is not None and os.path.isdir(folder)
    pool.close()
    assert not os.path.exists(folder)


def test_peek_leaves_the_frontier_and_constants_and_subgraphs_are_carried(rng):
    """Constant nodes are carried into every segment that reads them; an If whose branch reads a value of the
    enclosing graph keeps that value alive; peek computes without advancing."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    then = helper.make_graph([helper.make_node("Add", ["h", "k"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 4])])
    other = helper.make_graph([helper.make_node("Sub", ["h", "k"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 4])])
    nodes = [
        helper.make_node("Constant", [], ["k"], value=helper.make_tensor("kv", TensorProto.FLOAT, [1, 4], [1, 2, 3, 4])),
        helper.make_node("Constant", [], ["c"], value=helper.make_tensor("cv", TensorProto.BOOL, [], [True])),
        helper.make_node("Mul", ["x", "k"], ["h"]),
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("If", ["c"], ["i"], then_branch=then, else_branch=other),
        helper.make_node("Add", ["i", "r"], ["y"]),
    ]
    proto = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)],
                              ir_version=8)
    onnx.checker.check_model(proto)
    model = ir.serde.deserialize_model(proto)
    samples = [{"x": rng.standard_normal((1, 4)).astype(np.float32)} for _ in range(2)]
    stream = Stream(model, samples, "test")
    the_if = next(n for n in model.graph if n.op_type == "If")
    stream.advance(the_if)
    assert {"h", "r"} <= set(stream.state) and "k" not in stream.state  # h read only inside the If's branches
    before = set(stream.state)
    got = stream.peek(["y"])
    assert set(stream.state) == before
    for s, g in zip(samples, got):
        k = np.array([[1, 2, 3, 4]], np.float32)
        np.testing.assert_allclose(g["y"], s["x"] * k + k + np.maximum(s["x"], 0), rtol=1e-6)
    stream.advance(None)
    assert not stream.state


def test_peek_with_a_given_value_runs_the_tail_from_it_in_one_reused_session(rng, monkeypatch):
    """A value given to peek replaces what the graph computes (the nodes producing it are not run): the outputs equal
    onnxruntime's run of the model with that value substituted; peeks that differ only in the given arrays share one
    onnxruntime session; the frontier is left as it was."""
    from onebyone.calibrated import stream as stream_mod

    model = ir.serde.deserialize_model(generators.GENERATORS["resnet"](size=16, seed=3))
    samples = _samples(rng, 2)
    convs = [n for n in model.graph if n.op_type == "Conv"]
    conv = convs[len(convs) // 2]
    name, out = conv.outputs[0].name, model.graph.outputs[0].name
    made = []
    real_session = stream_mod.session
    monkeypatch.setattr(stream_mod, "session", lambda *a, **k: made.append(1) or real_session(*a, **k))
    stream = Stream(model, samples, "test")
    stream.advance(conv)
    made.clear()
    before = set(stream.state)
    shape = Probe(model, [name], "shape", only=True).run(samples[0])[name].shape
    for scale in (0.5, 2.0):
        given = [scale * rng.standard_normal(shape).astype(np.float32) for _ in samples]
        got = stream.peek([out], given={name: given}, reuse=True)
        # independent: the whole model with the conv's output cut off and fed as an input
        cut = ir.serde.serialize_model(model)
        cut.graph.node.remove(next(n for n in cut.graph.node if n.output[0] == name))
        cut.graph.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))
        import onnxruntime as ort

        sess = ort.InferenceSession(cut.SerializeToString(), providers=["CPUExecutionProvider"])
        for s, g, v in zip(samples, got, given):
            np.testing.assert_allclose(g[out], sess.run([out], {"input": s["input"], name: v})[0], rtol=1e-5, atol=1e-5)
    assert len(made) == 1 and set(stream.state) == before
    stream.close()


def test_feature_equations_equal_a_direct_computation_with_patches(rng):
    """E[ffᵀ], E[yfᵀ], E‖y‖² with f = [(B⊗I) p̂; 1] (explicit Kronecker product on explicit patches) and
    y = W p + b, on a strided, padded grouped conv, against what the fit computes from the arrays."""
    from onebyone.models.single_conv import single_conv_model
    from onebyone.calibrated import patches
    from onebyone.calibrated import moments as calibration

    groups, c, n, k = 2, 8, 6, (3, 3)
    w = rng.standard_normal((n, c // groups, *k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    proto = single_conv_model((1, c, 9, 9), w, bias, pads=(1, 0, 1, 1), strides=(2, 1), group=groups)
    model = ir.serde.deserialize_model(proto)
    info = analyze(model, {"x": (1, c, 9, 9)})[0]
    xs = [rng.standard_normal((1, c, 9, 9)).astype(np.float32) for _ in range(5)]
    x_hats = [x + 0.1 * rng.standard_normal(x.shape).astype(np.float32) for x in xs]
    ys = [Probe(model).run({"x": x})[next(iter(Probe(model).names))] for x in xs]
    m = calibration.Moments.zeros(c)
    for x in xs:
        m.update(x)
    d = start(info, whitening.spectrum(info.weight, groups, m.second_moment), m)
    d.rank = 2
    b = rng.standard_normal((groups * 2, c // groups, 1, 1)).astype(np.float32)
    data = fitting.ConvData(xs, x_hats, ys)
    fit_eq, held_eq = fitting.feature_equations(d, b, data, bias.astype(np.float64))
    pads = patches.explicit_pads((9, 9), k, (2, 1), (1, 1), (1, 0, 1, 1), "NOTSET")
    cpg = c // groups
    for g, (rows, _, _, ff, yf, yy, count) in enumerate(fit_eq):
        feats, targets = [], []
        for i in [0, 1, 2, 4]:  # sample 3 is held out (every 4th)
            p = patches.im2col(xs[i], k, (2, 1), (1, 1), pads, slice(g * cpg, (g + 1) * cpg)).astype(np.float64)
            p_hat = patches.im2col(x_hats[i], k, (2, 1), (1, 1), pads, slice(g * cpg, (g + 1) * cpg)).astype(np.float64)
            kron = np.kron(b[g * 2:(g + 1) * 2, :, 0, 0].astype(np.float64), np.eye(9))
            feats.append(np.concatenate([p_hat @ kron.T, np.ones((len(p_hat), 1))], axis=1))
            targets.append(p @ w[rows].reshape(n // groups, -1).T.astype(np.float64) + bias[rows])
        f, t = np.concatenate(feats), np.concatenate(targets)
        assert count == len(f)
        np.testing.assert_allclose(ff, f.T @ f / len(f), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(yf, t.T @ f / len(f), rtol=1e-4, atol=1e-4)
        assert yy == pytest.approx(float(np.sum(t**2)) / len(f), rel=1e-4)
    assert held_eq[0][-1] == fit_eq[0][-1] // 4  # one held-out sample of the same size


def test_data_aware_fit_on_an_external_data_model_equals_the_in_memory_one(tmp_path, rng):
    """The streams read weights stored outside the model file; the data-aware rewrite is the same as for the same
    model held in memory, and the input files are untouched."""
    from onebyone import RankPolicy, optimize
    from onebyone.modelio import load_model

    proto = generators.resnet(size=16, seed=4)
    src = tmp_path / "in.onnx"
    onnx.save(generators.resnet(size=16, seed=4), src, save_as_external_data=True, all_tensors_to_one_file=True, location="in.onnx.data",
              size_threshold=0)
    before = (src.read_bytes(), (tmp_path / "in.onnx.data").read_bytes())
    calib = _samples(rng, 8)
    policy = RankPolicy("budget", macs=0.6)
    external, rep_ext = optimize(load_model(src), policy, verify=False, calibration=calib)
    memory, rep_mem = optimize(ir.serde.deserialize_model(proto), policy, verify=False, calibration=calib)
    assert rep_ext.method == "data" and rep_ext.totals.rewritten > 0
    assert [l.rank for l in rep_ext.layers] == [l.rank for l in rep_mem.layers]
    x = {"input": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)}
    a = Probe(external).run(x)
    b = Probe(memory).run(x)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6)
    assert before == (src.read_bytes(), (tmp_path / "in.onnx.data").read_bytes())


def test_weights_in_memory_leave_the_protobuf_and_give_the_same_outputs(rng):
    """The large float initializers leave the protobuf (stubs read from memory), the small ones stay, and onnxruntime
    computes the same outputs from the arrays handed to it."""
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)  # 9,216 bytes
    b = rng.standard_normal(16).astype(np.float32)  # 64 bytes
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])], "conv",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 8, 8])],
                              [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(b, "b")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = rng.standard_normal((1, 16, 8, 8)).astype(np.float32)
    want = session(proto).run(None, {"x": x})[0]
    arrays = weights_in_memory(proto)
    assert set(arrays) == {"w"} and np.array_equal(arrays["w"], w)
    stub = next(t for t in proto.graph.initializer if t.name == "w")
    assert not stub.raw_data and stub.data_location == TensorProto.EXTERNAL
    np.testing.assert_array_equal(session(proto, initializers=arrays).run(None, {"x": x})[0], want)
