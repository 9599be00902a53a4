"""Isolated micro-models of one conv, as the runtime will see it: the original conv, and the rewritten pair (a 1x1
bottleneck to r channels per group, then the conv at rank r) with the conv's real input shape and attributes."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

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


def original(info, seed: int = 0) -> onnx.ModelProto:
    """x -> Conv(W, b) -> y with the conv's shapes and attributes (random weights: time does not depend on them)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((info.out_channels, info.in_channels // info.groups, *info.kernel)).astype(np.float32)
    b = rng.standard_normal(info.out_channels).astype(np.float32)
    node = helper.make_node("Conv", ["x", "W", "B"], ["y"], **conv_attributes(info))
    return _model([node], [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")], (1, *info.input_shape[1:]))


def pair(info, rank: int, seed: int = 0, form: str = "input") -> onnx.ModelProto:
    """Input form: x -> Conv1x1(B: C -> g·rank, grouped) -> Conv(W': g·rank -> N, the conv's attributes, bias) -> y.
    Output form: x -> Conv(R: C -> g·rank, the conv's attributes) -> Conv1x1(E: g·rank -> N, grouped, bias) -> y.
    Spatial form: see _spatial_pair."""
    rng = np.random.default_rng(seed)
    g, nd = info.groups, len(info.kernel)
    if form == "spatial":
        return _spatial_pair(info, rank, rng)
    if form == "output":
        r = rng.standard_normal((g * rank, info.in_channels // g, *info.kernel)).astype(np.float32)
        e = rng.standard_normal((info.out_channels, rank, *([1] * nd))).astype(np.float32)
        bias = rng.standard_normal(info.out_channels).astype(np.float32)
        reduce = helper.make_node("Conv", ["x", "R"], ["mid"], **conv_attributes(info))
        expand = helper.make_node("Conv", ["mid", "E", "B"], ["y"], kernel_shape=[1] * nd, strides=[1] * nd,
                                  pads=[0] * (2 * nd), group=g)
        inits = [numpy_helper.from_array(r, "R"), numpy_helper.from_array(e, "E"), numpy_helper.from_array(bias, "B")]
        return _model([reduce, expand], inits, (1, *info.input_shape[1:]))
    b = rng.standard_normal((g * rank, info.in_channels // g, *([1] * nd))).astype(np.float32)
    w = rng.standard_normal((info.out_channels, rank, *info.kernel)).astype(np.float32)
    bias = rng.standard_normal(info.out_channels).astype(np.float32)
    squeeze = helper.make_node("Conv", ["x", "Bn"], ["mid"], kernel_shape=[1] * nd, strides=[1] * nd,
                               pads=[0] * (2 * nd), group=g)
    conv = helper.make_node("Conv", ["mid", "W", "B"], ["y"], **conv_attributes(info))
    inits = [numpy_helper.from_array(b, "Bn"), numpy_helper.from_array(w, "W"), numpy_helper.from_array(bias, "B")]
    return _model([squeeze, conv], inits, (1, *info.input_shape[1:]))


def _spatial_pair(info, rank: int, rng) -> onnx.ModelProto:
    """x -> Conv(kh x 1: C -> g·rank, vertical strides/dilations/pads) -> Conv(1 x kw: -> N, horizontal ones, bias)."""
    g, (kh, kw) = info.groups, info.kernel
    attrs = conv_attributes(info)
    first = {"group": g, "kernel_shape": [kh, 1], "strides": [info.strides[0], 1], "dilations": [info.dilations[0], 1]}
    second = {"group": g, "kernel_shape": [1, kw], "strides": [1, info.strides[1]], "dilations": [1, info.dilations[1]]}
    if "pads" in attrs:
        p = attrs["pads"]
        first["pads"], second["pads"] = [p[0], 0, p[2], 0], [0, p[1], 0, p[3]]
    else:
        first["auto_pad"] = second["auto_pad"] = attrs["auto_pad"]
    f = rng.standard_normal((g * rank, info.in_channels // g, kh, 1)).astype(np.float32)
    w = rng.standard_normal((info.out_channels, rank, 1, kw)).astype(np.float32)
    bias = rng.standard_normal(info.out_channels).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "F"], ["mid"], **first), helper.make_node("Conv", ["mid", "G", "B"], ["y"], **second)]
    inits = [numpy_helper.from_array(f, "F"), numpy_helper.from_array(w, "G"), numpy_helper.from_array(bias, "B")]
    return _model(nodes, inits, (1, *info.input_shape[1:]))


def passthrough(info) -> onnx.ModelProto:
    """x -> (one element of x) -> y with the conv's input: what a run costs besides the conv (the call, copying the
    input in, waking the runtime's threads). (Not Identity: a TVM RPC server cannot return its own argument.)"""
    nd = len(info.input_shape)
    starts = numpy_helper.from_array(np.zeros(nd, np.int64), "starts")
    ends = numpy_helper.from_array(np.ones(nd, np.int64), "ends")
    return _model([helper.make_node("Slice", ["x", "starts", "ends"], ["y"])], [starts, ends],
                  (1, *info.input_shape[1:]))
