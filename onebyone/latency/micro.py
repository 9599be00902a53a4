"""Isolated micro-models of one conv, as the runtime will see it: the original conv, and the rewritten pair (a 1x1
bottleneck to r channels per group, then the conv at rank r) with the conv's real input shape and attributes."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onebyone.passes.rewrite import split_attributes

OPSET = 17


def conv_attributes(info) -> dict:
    """The conv's own attributes (pads or auto_pad, strides, dilations, group)."""
    attrs = {"strides": list(info.strides), "dilations": list(info.dilations), "group": info.groups,
             "kernel_shape": list(info.kernel)}
    if info.auto_pad not in ("NOTSET", ""):
        attrs["auto_pad"] = info.auto_pad
    else:
        attrs["pads"] = list(info.pads)
    return attrs


def _model(nodes, inits, input_shape) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "micro", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * len(input_shape))], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])
    m.ir_version = 8
    return m


def input_shape(info) -> tuple[int, ...]:
    """The micro-models' input: the conv's input for one batch item (a Gemm/MatMul: the rows of one batch item,
    passes.matrix.rows_per_item, as a matrix [rows, K]; Gemm with transA: [K, rows])."""
    op = info.matrix
    if op is None:
        return (1, *info.input_shape[1:])
    if op.op_type == "Gemm":
        return (op.raw_input[0], op.positions) if op.trans_a else (op.positions, op.raw_input[1])
    return op.positions, op.raw_input[-1]


def _matrix(info, rank: int | None, rng) -> onnx.ModelProto:
    """A Gemm/MatMul as the graph has it (rank None), or its two products at `rank` (passes.matrix_rewrite)."""
    op, k, n = info.matrix, info.in_channels, info.out_channels
    gemm = op.op_type == "Gemm"
    arrays = {"W": (n, k if rank is None else rank) if gemm else (k if rank is None else rank, n), "B": (n,)}
    data = "x" if rank is None else "mid"
    if gemm:
        nodes = [helper.make_node("Gemm", [data, "W", "B"], ["y"], transB=1, transA=int(op.trans_a and rank is None))]
    else:
        nodes = [helper.make_node("MatMul", [data, "W"], ["z"]), helper.make_node("Add", ["z", "B"], ["y"])]
    if rank is not None:
        arrays["F"] = (k, rank)
        nodes.insert(0, helper.make_node("Gemm", ["x", "F"], ["mid"], transA=int(op.trans_a)) if gemm
                     else helper.make_node("MatMul", ["x", "F"], ["mid"]))
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name) for name, shape in arrays.items()]
    return _model(nodes, inits, input_shape(info))


def original(info, seed: int = 0) -> onnx.ModelProto:
    """x -> Conv(W, b) -> y with the conv's shapes and attributes (random weights: time does not depend on them; a
    Gemm or MatMul: the op itself, a MatMul with an Add of its bias)."""
    rng = np.random.default_rng(seed)
    if info.matrix is not None:
        return _matrix(info, None, rng)
    w = rng.standard_normal((info.out_channels, info.in_channels // info.groups, *info.kernel)).astype(np.float32)
    b = rng.standard_normal(info.out_channels).astype(np.float32)
    node = helper.make_node("Conv", ["x", "W", "B"], ["y"], **conv_attributes(info))
    return _model([node], [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")], (1, *info.input_shape[1:]))


def pair(info, rank: int, seed: int = 0, form: str = "input") -> onnx.ModelProto:
    """Input form: x -> Conv1x1(B: C -> g·rank, grouped) -> Conv(W': g·rank -> N, the conv's attributes, bias) -> y.
    Output and spatial forms: the two convs of passes.rewrite.split_attributes (C -> g·rank, then -> N with the bias).
    Tucker-2: a 1x1 squeeze to g·r1, the conv's attributes to g·r2, a 1x1 to N with the bias ((r1, r2) of knob `rank`).
    A Gemm or MatMul: its two products (passes.matrix_rewrite)."""
    rng = np.random.default_rng(seed)
    if info.matrix is not None:
        return _matrix(info, rank, rng)
    g, nd = info.groups, len(info.kernel)
    extra = []  # initializers beyond F, W and B
    if form == "tucker2":
        r1, r2 = info.tucker2_ranks(rank)
        ones = dict(kernel_shape=[1] * nd, strides=[1] * nd, pads=[0] * (2 * nd), group=g)
        f = rng.standard_normal((g * r1, info.in_channels // g, *([1] * nd))).astype(np.float32)
        core = rng.standard_normal((g * r2, r1, *info.kernel)).astype(np.float32)
        w = rng.standard_normal((info.out_channels, r2, *([1] * nd))).astype(np.float32)
        nodes = [helper.make_node("Conv", ["x", "F"], ["mid"], **ones),
                 helper.make_node("Conv", ["mid", "K"], ["core"], **conv_attributes(info)),
                 helper.make_node("Conv", ["core", "W", "B"], ["y"], **ones)]
        extra = [numpy_helper.from_array(core, "K")]
    elif form in ("output", "spatial"):
        first, second = split_attributes(form, info.kernel, info.strides, info.dilations, info.pads, info.auto_pad, g)
        f = rng.standard_normal((g * rank, info.in_channels // g, *first["kernel_shape"])).astype(np.float32)
        w = rng.standard_normal((info.out_channels, rank, *second["kernel_shape"])).astype(np.float32)
        nodes = [helper.make_node("Conv", ["x", "F"], ["mid"], **first),
                 helper.make_node("Conv", ["mid", "W", "B"], ["y"], **second)]
    else:
        f = rng.standard_normal((g * rank, info.in_channels // g, *([1] * nd))).astype(np.float32)
        w = rng.standard_normal((info.out_channels, rank, *info.kernel)).astype(np.float32)
        nodes = [helper.make_node("Conv", ["x", "F"], ["mid"], kernel_shape=[1] * nd, strides=[1] * nd,
                                  pads=[0] * (2 * nd), group=g),
                 helper.make_node("Conv", ["mid", "W", "B"], ["y"], **conv_attributes(info))]
    bias = rng.standard_normal(info.out_channels).astype(np.float32)
    inits = [numpy_helper.from_array(f, "F"), numpy_helper.from_array(w, "W"), numpy_helper.from_array(bias, "B"), *extra]
    return _model(nodes, inits, input_shape(info))


def passthrough(info) -> onnx.ModelProto:
    """x -> (one element of x) -> y with the conv's input: what a run costs besides the conv (the call, copying the
    input in, waking the runtime's threads). (Not Identity: a TVM RPC server cannot return its own argument.)"""
    nd = len(input_shape(info))
    starts = numpy_helper.from_array(np.zeros(nd, np.int64), "starts")
    ends = numpy_helper.from_array(np.ones(nd, np.int64), "ends")
    return _model([helper.make_node("Slice", ["x", "starts", "ends"], ["y"])], [starts, ends], input_shape(info))
