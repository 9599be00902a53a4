"""The corpus of bad and odd inputs: each case writes its files into a folder and states its expected outcome.

Run `python tests/corpus/build.py OUTDIR` to write every case (one folder each, plus cases.json); the tests build it
in a temp folder (tests/test_corpus.py). Outcomes, for `inspect` and `optimize` (with the case's options):
- ("error", text): exit 2 and one line `onebyone: error: ...` containing `text`; no output written;
- ("skip", text): exit 0; the per-conv table states the skip reason `text`; the optimized model equals the original;
- ("rewrite", text): exit 0; at least one conv rewritten and verified (`text` in the output);
- ("ok", text): exit 0 with `text` in the output (models with no conv to rewrite).
Every case also goes through `verify MODEL MODEL` and `compile` (exit 0, or 2 with one line: a model TVM cannot take).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

C, S = 8, 8  # channels and spatial size of the small models
LOSSLESS = ("rewrite", "lossless")
QUANTIZED_NOTE = "1 quantized conv(s) (QLinearConv/ConvInteger) are not rewritten"


@dataclasses.dataclass
class Case:
    name: str
    build: Callable[[Path], None]  # writes model.onnx (and any other files) into the folder
    expect: tuple[str, str]
    args: tuple[str, ...] = ()  # options for inspect and optimize
    optimize_expect: tuple[str, str] | None = None  # when optimize differs from inspect
    model: str = "model.onnx"  # the MODEL argument (relative to the case folder)
    output: str = "out.onnx"  # optimize's -o (relative to the case folder)
    file_error: bool = False  # the file itself is bad: every command (verify and compile too) must refuse it


def _model(nodes, inputs, outputs, inits=(), opset: int = 17, domains=()) -> onnx.ModelProto:
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    g = helper.make_graph(nodes, "corpus", inputs, outputs, initializer=list(inits))
    m = helper.make_model(g, opset_imports=opsets, producer_name="onebyone.corpus")
    m.ir_version = min(helper.find_min_ir_version_for(opsets[:1]), 10) if opset <= 21 else 10
    return m


def _x(shape=(1, C, S, S), name="x", dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, list(shape))


def _y(name="y", dtype=TensorProto.FLOAT, rank: int | None = 4):
    return helper.make_tensor_value_info(name, dtype, None if rank is None else [None] * rank)


def _w(n=C, c=C, k=(3, 3), rank=None, seed=0, dtype=np.float32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if rank is None:
        w = rng.standard_normal((n, c) + tuple(k)) * 0.2
    else:
        w = (rng.standard_normal((c, rank)) @ rng.standard_normal((rank, n * int(np.prod(k))))).reshape((c, n) + tuple(k))
        w = w.swapaxes(0, 1) * 0.1
    return w.astype(dtype)


def _conv_model(w: np.ndarray, x_shape=None, opset=17, dtype=TensorProto.FLOAT, **attrs) -> onnx.ModelProto:
    nd = w.ndim - 2
    attrs.setdefault("pads", [w.shape[2 + d] // 2 for d in range(nd)] * 2) if "auto_pad" not in attrs else None
    x_shape = x_shape or (1, w.shape[1] * attrs.get("group", 1)) + (S,) * nd
    node = helper.make_node("Conv", ["x", "W"], ["y"], name="conv", **attrs)
    return _model([node], [_x(x_shape, dtype=dtype)], [_y(dtype=dtype, rank=len(x_shape))],
                  [numpy_helper.from_array(w, "W")], opset)


def _save(m: onnx.ModelProto, name: str = "model.onnx"):
    def write(folder: Path) -> None:
        onnx.save(m, str(folder / name))
    return write


def _bytes(data: bytes, name: str = "model.onnx"):
    def write(folder: Path) -> None:
        (folder / name).write_bytes(data)
    return write


def _lowrank(**kw) -> onnx.ModelProto:
    return _conv_model(_w(rank=2), **kw)


def _valid_bytes() -> bytes:
    return _lowrank().SerializeToString()


def _external(folder: Path, damage: str | None = None) -> None:
    m = _lowrank()
    onnx.save(m, str(folder / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx.data", size_threshold=0)
    data = folder / "model.onnx.data"
    if damage == "missing":
        data.unlink()
    elif damage == "truncated":
        data.write_bytes(data.read_bytes()[:100])
    elif damage == "outside":
        proto = onnx.load(str(folder / "model.onnx"), load_external_data=False)
        for t in proto.graph.initializer:
            for e in t.external_data:
                if e.key == "location":
                    e.value = "../../etc/hostname"
        onnx.save(proto, str(folder / "model.onnx"))


def _subgraph_model(op: str) -> onnx.ModelProto:
    w = numpy_helper.from_array(_w(rank=2), "W")
    body_conv = helper.make_node("Conv", ["x", "W"], ["inner"], pads=[1, 1, 1, 1], name="inner_conv")
    if op == "If":
        then = helper.make_graph([body_conv], "then", [], [_y("inner")])
        other = helper.make_graph([helper.make_node("Identity", ["x"], ["other"])], "else", [], [_y("other")])
        nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
                 helper.make_node("Greater", ["s", "zero"], ["cond"]),
                 helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)]
        inits = [w, numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
        return _model(nodes, [_x()], [_y()], inits)
    body = helper.make_graph(
        [body_conv, helper.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), _y("inner")])
    nodes = [helper.make_node("Loop", ["trips", ""], ["scan"], body=body),
             helper.make_node("ReduceSum", ["scan", "axes"], ["y"], keepdims=0)]
    inits = [w, numpy_helper.from_array(np.array(1, np.int64), "trips"), numpy_helper.from_array(np.array([0], np.int64), "axes")]
    return _model(nodes, [_x()], [_y()], inits)


def _qdq() -> onnx.ModelProto:
    wq = np.clip(np.round(_w() / 0.01), -127, 127).astype(np.int8)
    nodes = [helper.make_node("DequantizeLinear", ["Wq", "scale", "zp"], ["W"]),
             helper.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1])]
    inits = [numpy_helper.from_array(wq, "Wq"), numpy_helper.from_array(np.array(0.01, np.float32), "scale"),
             numpy_helper.from_array(np.array(0, np.int8), "zp")]
    return _model(nodes, [_x()], [_y()], inits)


def _conv_integer() -> onnx.ModelProto:
    w = np.random.default_rng(0).integers(-5, 5, (C, C, 3, 3)).astype(np.int8)
    nodes = [helper.make_node("ConvInteger", ["x", "W", "x_zp"], ["y"], pads=[1, 1, 1, 1])]
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.array(0, np.uint8), "x_zp")]
    return _model(nodes, [_x(dtype=TensorProto.UINT8)], [_y(dtype=TensorProto.INT32)], inits)


def _qlinear_conv() -> onnx.ModelProto:
    """A conv quantized in onnxruntime's QOperator format (uint8 activations, int8 weight, int32 bias)."""
    w = np.random.default_rng(0).integers(-5, 5, (C, C, 3, 3)).astype(np.int8)
    names = ["x", "xs", "xz", "W", "ws", "wz", "ys", "yz", "B"]
    nodes = [helper.make_node("QLinearConv", names, ["y"], pads=[1, 1, 1, 1])]
    arrays = {"xs": np.array(0.02, np.float32), "xz": np.array(128, np.uint8), "W": w, "ws": np.array(0.01, np.float32),
              "wz": np.array(0, np.int8), "ys": np.array(0.05, np.float32), "yz": np.array(128, np.uint8),
              "B": np.zeros(C, np.int32)}
    inits = [numpy_helper.from_array(a, n) for n, a in arrays.items()]
    return _model(nodes, [_x(dtype=TensorProto.UINT8)], [_y(dtype=TensorProto.UINT8)], inits)


def _fused_conv() -> onnx.ModelProto:
    """A conv as onnxruntime's graph optimizations save it: com.microsoft FusedConv (the conv with its ReLU)."""
    node = helper.make_node("FusedConv", ["x", "W"], ["y"], domain="com.microsoft", activation="Relu",
                            pads=[1, 1, 1, 1])
    return _model([node], [_x()], [_y()], [numpy_helper.from_array(_w(rank=2), "W")], domains=("com.microsoft",))


def _conv_transpose() -> onnx.ModelProto:
    nodes = [helper.make_node("ConvTranspose", ["x", "W"], ["y"], strides=[2, 2])]
    return _model(nodes, [_x()], [_y()], [numpy_helper.from_array(_w(), "W")])


def _shared(with_other_user: bool) -> onnx.ModelProto:
    w = _w(rank=2)
    nodes = [helper.make_node("Conv", ["x", "W"], ["a"], pads=[1, 1, 1, 1], name="c0"),
             helper.make_node("Conv", ["a", "W"], ["b"], pads=[1, 1, 1, 1], name="c1")]
    outputs = [_y("b")]
    if with_other_user:
        nodes.append(helper.make_node("ReduceSum", ["W"], ["wsum"], keepdims=0))
        outputs.append(helper.make_tensor_value_info("wsum", TensorProto.FLOAT, []))
    return _model(nodes, [_x()], outputs, [numpy_helper.from_array(w, "W")])


def _weight_as_input() -> onnx.ModelProto:
    return _model([helper.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1])],
                  [_x(), _x((C, C, 3, 3), "W")], [_y()])


def _initializer_input(ir_version: int) -> onnx.ModelProto:
    """The weight an initializer also listed as a graph input (IR 3 required it; old exporters kept doing it)."""
    w = numpy_helper.from_array(_w(rank=2), "W")
    m = _model([helper.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1])],
               [_x(), _x((C, C, 3, 3), "W")], [_y()], [w], opset=8)
    m.ir_version = ir_version
    return m


def _computed_weight() -> onnx.ModelProto:
    nodes = [helper.make_node("Mul", ["W0", "gain"], ["W"]), helper.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1])]
    return _model(nodes, [_x(), helper.make_tensor_value_info("gain", TensorProto.FLOAT, [])], [_y()],
                  [numpy_helper.from_array(_w(rank=2), "W0")])


def _cast_fp16_weight() -> onnx.ModelProto:
    nodes = [helper.make_node("Cast", ["W16"], ["W"], to=TensorProto.FLOAT),
             helper.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1])]
    return _model(nodes, [_x()], [_y()], [numpy_helper.from_array(_w(rank=2, dtype=np.float16), "W16")])


def _bf16() -> onnx.ModelProto:
    import ml_dtypes

    w = numpy_helper.from_array(_w(rank=2).astype(ml_dtypes.bfloat16), "W")
    node = helper.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1])
    return _model([node], [_x(dtype=TensorProto.BFLOAT16)], [_y(dtype=TensorProto.BFLOAT16)], [w])


def _two_inputs() -> onnx.ModelProto:
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Add", ["c", "z"], ["y"])]
    return _model(nodes, [_x(), _x(name="z")], [_y()], [numpy_helper.from_array(_w(rank=2), "W")])


def _scalar_input() -> onnx.ModelProto:
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Mul", ["c", "g"], ["y"])]
    return _model(nodes, [_x(), helper.make_tensor_value_info("g", TensorProto.FLOAT, [])], [_y()],
                  [numpy_helper.from_array(_w(rank=2), "W")])


def _scalar_inputs_npz(folder: Path) -> None:
    onnx.save(_scalar_input(), str(folder / "model.onnx"))
    rng = np.random.default_rng(0)
    np.savez(folder / "inputs.npz", x=rng.standard_normal((2, 1, C, S, S)).astype(np.float32),
             g=np.array([0.5, 2.0], np.float32))


def _npz(folder: Path, **arrays) -> None:
    onnx.save(_lowrank(), str(folder / "model.onnx"))
    np.savez(folder / "inputs.npz", **arrays)


def _no_conv() -> onnx.ModelProto:
    return _model([helper.make_node("Relu", ["x"], ["y"])], [_x()], [_y()])


def _ort_cannot_run() -> onnx.ModelProto:
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Resize", ["c", "", "scales"], ["y"], mode="no-such-mode")]
    inits = [numpy_helper.from_array(_w(rank=2), "W"), numpy_helper.from_array(np.ones(4, np.float32), "scales")]
    return _model(nodes, [_x()], [_y()], inits)


def _custom_op() -> onnx.ModelProto:
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Frobnicate", ["c"], ["y"], domain="com.example")]
    return _model(nodes, [_x()], [_y()], [numpy_helper.from_array(_w(rank=2), "W")], domains=("com.example",))


def _dangling() -> onnx.ModelProto:
    return _model([helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Add", ["c", "nowhere"], ["y"])],
                  [_x()], [_y()], [numpy_helper.from_array(_w(rank=2), "W")])


def _cycle() -> onnx.ModelProto:
    nodes = [helper.make_node("Add", ["x", "b"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Conv", ["b", "W"], ["y"], pads=[1, 1, 1, 1])]
    return _model(nodes, [_x()], [_y()], [numpy_helper.from_array(_w(rank=2), "W")])


def _unsorted() -> onnx.ModelProto:
    """A low-rank conv after a Relu, the nodes listed in reverse (onnxruntime runs it; the ONNX checker refuses it)."""
    nodes = [helper.make_node("Conv", ["r", "W"], ["y"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["x"], ["r"])]
    return _model(nodes, [_x()], [_y()], [numpy_helper.from_array(_w(rank=2), "W")])


def _bad_attribute() -> onnx.ModelProto:
    return _conv_model(_w(rank=2), strides=[1, 1, 1])


def _images(folder: Path, kind: str) -> None:
    onnx.save(_lowrank(), str(folder / "model.onnx"))
    (folder / "calib").mkdir()
    if kind == "text":
        (folder / "calib" / "notes.txt").write_text("no images here\n")


def _nonfinite(value: float) -> onnx.ModelProto:
    w = _w(rank=2)
    w[0, 0, 0, 0] = value
    return _conv_model(w)


CASES: list[Case] = [
    # files that are not ONNX models
    Case("empty-file", _bytes(b""), ("error", "empty file"), file_error=True),
    Case("truncated-10pct", _bytes(_valid_bytes()[: len(_valid_bytes()) // 10]), ("error", "model.onnx"), file_error=True),
    Case("truncated-50pct", _bytes(_valid_bytes()[: len(_valid_bytes()) // 2]), ("error", "model.onnx"), file_error=True),
    Case("truncated-last-byte", _bytes(_valid_bytes()[:-1]), ("error", "model.onnx"), file_error=True),
    Case("random-bytes", _bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()), ("error", "model.onnx"), file_error=True),
    Case("text-file", _bytes(b"this is a README, not a model\n" * 20), ("error", "model.onnx"), file_error=True),
    Case("tensor-protobuf", _bytes(numpy_helper.from_array(np.ones(10, np.float32), "t").SerializeToString()), ("error", "not a valid ONNX model"), file_error=True),
    Case("missing-file", lambda f: None, ("error", "no such file"), file_error=True),
    Case("folder-as-model", lambda f: (f / "model.onnx").mkdir(), ("error", "not a file"), file_error=True),
    # weights that are not plain constants
    Case("weight-graph-input", _save(_weight_as_input()), ("skip", "graph input")),
    Case("weight-initializer-input-ir3", _save(_initializer_input(3)), LOSSLESS),  # a constant under IR < 4
    Case("weight-initializer-input", _save(_initializer_input(7)), ("skip", "--constant-initializers")),
    Case("weight-initializer-input-constant", _save(_initializer_input(7)), LOSSLESS, args=("--constant-initializers",)),
    Case("weight-computed", _save(_computed_weight()), ("skip", "not constant")),
    Case("weight-qdq", _save(_qdq()), ("skip", "quantized weight")),
    Case("weight-cast-from-fp16", _save(_cast_fp16_weight()), ("skip", "cast at run time")),
    Case("conv-integer", _save(_conv_integer()), ("ok", QUANTIZED_NOTE)),
    Case("qlinear-conv", _save(_qlinear_conv()), ("ok", QUANTIZED_NOTE)),
    Case("onnxruntime-fused-conv", _save(_fused_conv()), ("ok", "1 conv(s) are onnxruntime's own fused")),
    Case("conv-transpose", _save(_conv_transpose()), ("ok", "0 of 0 convs")),
    Case("conv-in-if", _save(_subgraph_model("If")), ("skip", "control-flow")),
    Case("conv-in-loop", _save(_subgraph_model("Loop")), ("skip", "control-flow")),
    Case("weight-shared-by-convs", _save(_shared(False)), ("rewrite", "lossless")),
    Case("weight-shared-with-non-conv", _save(_shared(True)), ("rewrite", "lossless")),
    # shapes
    Case("dynamic-spatial", _save(_lowrank(x_shape=(1, C, "H", "W"))), ("error", "--input-shape")),
    Case("dynamic-spatial-fixed", _save(_lowrank(x_shape=(1, C, "H", "W"))), ("rewrite", "lossless"),
         args=("--input-shape", "x:1x8x8x8")),
    Case("input-shape-malformed", _save(_lowrank()), ("error", "--input-shape"), args=("--input-shape", "x:1xabc")),
    Case("input-shape-unknown-name", _save(_lowrank()), ("error", "nope"), args=("--input-shape", "nope:1x8x8x8")),
    Case("zero-size-dim", _save(_lowrank(x_shape=(1, C, 0, S))), ("error", "invalid")),
    # opsets and domains
    Case("opset-7", _save(_lowrank(opset=7)), ("rewrite", "lossless")),
    Case("opset-21", _save(_lowrank(opset=21)), ("rewrite", "lossless")),
    Case("opset-newest", _save(_lowrank(opset=onnx.defs.onnx_opset_version())), ("rewrite", "lossless"),
         optimize_expect=("error", "onnxruntime cannot load")),  # onnx knows opsets that onnxruntime does not run yet
    Case("opset-too-new", _save(_lowrank(opset=99)), ("error", "unsupported opset"), file_error=True),
    Case("unknown-domain-op", _save(_custom_op()), ("rewrite", "lossless"), optimize_expect=("error", "com.example::Frobnicate")),
    # external data
    Case("external-data", lambda f: _external(f), ("rewrite", "lossless")),
    Case("external-data-missing", lambda f: _external(f, "missing"), ("error", "missing"), file_error=True),
    Case("external-data-truncated", lambda f: _external(f, "truncated"), ("error", "truncated"), file_error=True),
    Case("external-data-outside", lambda f: _external(f, "outside"), ("error", "outside the model's folder"), file_error=True),
    # dtypes
    Case("float16-weights", _save(_conv_model(_w(rank=2, dtype=np.float16), dtype=TensorProto.FLOAT16)), ("rewrite", "lossless")),
    Case("float64-weights", _save(_conv_model(_w(rank=2, dtype=np.float64), dtype=TensorProto.DOUBLE)), ("rewrite", "lossless"),
         optimize_expect=("error", "Could not find an implementation for Conv")),  # onnxruntime has no float64 Conv
    Case("bfloat16-weights", _save(_bf16()), ("skip", "bfloat16"), optimize_expect=("error", "onnxruntime")),
    Case("nan-weight", _save(_nonfinite(np.nan)), ("skip", "NaN or Inf")),
    Case("inf-weight", _save(_nonfinite(np.inf)), ("skip", "NaN or Inf")),
    # conv geometry
    Case("depthwise", _save(_conv_model(_w(c=1), group=C)), ("skip", "depthwise")),
    Case("group-not-dividing", _save(_conv_model(_w(n=6, c=2), x_shape=(1, 8, S, S), group=4)), ("error", "invalid")),
    Case("kernel-larger-than-input", _save(_conv_model(_w(k=(5, 5)), x_shape=(1, C, 3, 3), pads=[0, 0, 0, 0])), ("error", "invalid")),
    Case("kernel-shape-mismatch", _save(_conv_model(_w(rank=2), kernel_shape=[5, 5])), ("error", "invalid")),
    Case("conv-1d", _save(_conv_model(_w(k=(3,), rank=2))), ("rewrite", "lossless")),
    Case("conv-3d", _save(_conv_model(_w(k=(3, 3, 3), rank=2))), ("rewrite", "lossless")),
    Case("auto-pad-same-upper", _save(_conv_model(_w(rank=2), auto_pad="SAME_UPPER")), ("rewrite", "lossless")),
    Case("auto-pad-same-lower", _save(_conv_model(_w(rank=2), auto_pad="SAME_LOWER", strides=[2, 2])), ("rewrite", "lossless")),
    Case("auto-pad-valid", _save(_conv_model(_w(rank=2), auto_pad="VALID")), ("rewrite", "lossless")),
    Case("negative-pads", _save(_conv_model(_w(rank=2), pads=[-1, 0, 0, 0])), ("skip", "negative pads"),
         optimize_expect=("error", "onnxruntime")),
    Case("asymmetric-pads", _save(_conv_model(_w(rank=2), pads=[0, 1, 2, 1])), ("rewrite", "lossless")),
    Case("kernel-1x31", _save(_conv_model(_w(k=(1, 31), rank=2), x_shape=(1, C, 4, 40), pads=[0, 15, 0, 15])), ("rewrite", "lossless")),
    Case("checker-invalid-attribute", _save(_bad_attribute()), ("error", "invalid")),
    Case("dangling-input", _save(_dangling()), ("error", "'nowhere' of Add node"), file_error=True),
    Case("graph-cycle", _save(_cycle()), ("error", "cycle"), file_error=True),
    Case("nodes-out-of-order", _save(_unsorted()), LOSSLESS),  # float16 converters' keep_io_types write such graphs
    # models as a whole
    Case("onnxruntime-cannot-run", _save(_ort_cannot_run()), ("skip", "lossless"), optimize_expect=("error", "onnxruntime")),
    Case("two-inputs", _save(_two_inputs()), ("rewrite", "lossless")),
    Case("no-conv", _save(_no_conv()), ("ok", "0 of 0 convs")),
    Case("scalar-input-npz", _scalar_inputs_npz, ("rewrite", "lossless"), args=("--inputs", "inputs.npz")),
    # output paths
    Case("output-equals-input", _save(_lowrank()), LOSSLESS, optimize_expect=("error", "refusing to overwrite"),
         output="model.onnx"),
    Case("output-in-missing-folder", _save(_lowrank()), LOSSLESS, optimize_expect=("error", "does not exist"),
         output="no/such/folder/out.onnx"),
    Case("output-is-a-folder", lambda f: (_save(_lowrank())(f), (f / "outdir").mkdir()), LOSSLESS,
         optimize_expect=("error", "is a folder"), output="outdir"),
    Case("report-in-missing-folder", _save(_lowrank()), ("error", "does not exist"), args=("--report", "no/dir/r.json")),
    Case("plot-in-missing-folder", _save(_lowrank()), ("error", "does not exist"), args=("--plot", "no/dir/s.png")),
    # option values
    Case("rank-zero", _save(_lowrank()), ("error", "rank"), args=("--policy", "rank", "--rank", "0")),
    Case("rank-nan", _save(_lowrank()), ("error", "finite"), args=("--policy", "rank", "--rank", "nan")),
    Case("rank-inf", _save(_lowrank()), ("error", "finite"), args=("--policy", "rank", "--rank", "inf")),
    Case("rank-huge", _save(_lowrank()), ("skip", "not below break-even"), args=("--policy", "rank", "--rank", "1000000")),
    Case("energy-above-one", _save(_lowrank()), ("error", "energy"), args=("--policy", "energy", "--energy", "1.5")),
    Case("macs-zero", _save(_lowrank()), ("error", "macs"), args=("--policy", "budget", "--macs", "0")),
    Case("inputs-wrong-name", lambda f: _npz(f, nope=np.zeros((1, 1, C, S, S), np.float32)), LOSSLESS,
         args=("--inputs", "inputs.npz"), optimize_expect=("error", "nope")),
    Case("inputs-wrong-shape", lambda f: _npz(f, x=np.zeros((1, 1, C, S + 1, S), np.float32)), LOSSLESS,
         args=("--inputs", "inputs.npz"), optimize_expect=("error", "shape")),
    Case("inputs-wrong-dtype", lambda f: _npz(f, x=np.zeros((1, 1, C, S, S), np.float64)), LOSSLESS,
         args=("--inputs", "inputs.npz"), optimize_expect=("error", "float64")),
    Case("inputs-strings", lambda f: _npz(f, x=np.array([["a"] * 3])), LOSSLESS, args=("--inputs", "inputs.npz"),
         optimize_expect=("error", "inputs.npz")),
    Case("samples-zero", _save(_lowrank()), LOSSLESS, args=("--samples", "0"), optimize_expect=("error", "--samples")),
    Case("calibration-empty-folder", lambda f: _images(f, "empty"), ("error", "no images"), args=("--calibration", "calib")),
    Case("calibration-no-images", lambda f: _images(f, "text"), ("error", "no images"), args=("--calibration", "calib")),
]

# Options (with their value) that only `optimize` takes: the inspect run drops them; verify takes VERIFY_OPTIONS.
OPTIMIZE_ONLY = ("--inputs", "--samples")
VERIFY_OPTIONS = ("--input-shape", "--inputs", "--samples")


def build(folder: Path) -> list[Case]:
    """Write every case into folder/<name>/ and cases.json (name, expected outcome, options); return the cases."""
    folder.mkdir(parents=True, exist_ok=True)
    for case in CASES:
        d = folder / case.name
        d.mkdir()
        case.build(d)
    table = [{"name": c.name, "expect": c.expect, "optimize_expect": c.optimize_expect, "args": c.args,
              "model": c.model, "output": c.output} for c in CASES]
    (folder / "cases.json").write_text(json.dumps(table, indent=1))
    return CASES


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "corpus")
    print(f"{len(build(out))} cases in {out}")
