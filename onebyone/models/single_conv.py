"""One-Conv ONNX models with full control of every Conv attribute, for tests and experiments."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def single_conv_model(
    input_shape: tuple[int | str, ...],
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    strides: tuple[int, ...] | None = None,
    dilations: tuple[int, ...] | None = None,
    pads: tuple[int, ...] | None = None,
    auto_pad: str | None = None,
    group: int = 1,
    weights_as: str = "initializer",
    opset: int = 17,
    shared_weight_convs: int = 1,
) -> onnx.ModelProto:
    """x -> Conv(W, b) -> y. With `shared_weight_convs` = k > 1, k convs with identical attributes read the same
    weight tensor and their outputs are summed (tests that a rewrite keeps the other users working)."""
    attrs: dict = {"group": group, "kernel_shape": list(weight.shape[2:])}
    for key, val in (("strides", strides), ("dilations", dilations), ("pads", pads)):
        if val is not None:
            attrs[key] = list(val)
    if auto_pad is not None:
        attrs["auto_pad"] = auto_pad
    nodes, inits = [], []

    def const(name: str, array: np.ndarray) -> str:
        if weights_as == "constant":
            nodes.append(helper.make_node("Constant", [], [name], name=f"{name}_const", value=numpy_helper.from_array(array, name)))
        else:
            inits.append(numpy_helper.from_array(array, name))
        return name

    w_name = const("W", weight)
    conv_inputs = ["x", w_name] + ([const("B", bias)] if bias is not None else [])
    outs = []
    for i in range(shared_weight_convs):
        out = "y" if shared_weight_convs == 1 else f"y{i}"
        nodes.append(helper.make_node("Conv", conv_inputs, [out], name=f"conv{i}", **attrs))
        outs.append(out)
    if shared_weight_convs > 1:
        nodes.append(helper.make_node("Sum", outs, ["y"], name="sum"))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "single_conv", [x], [y], initializer=inits)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="onebyone.tests")
    model.ir_version = helper.find_min_ir_version_for(opsets)
    return _typed_output(model, len(input_shape))


def _typed_output(model: onnx.ModelProto, rank: int) -> onnx.ModelProto:
    """The model with its output 'y' typed by shape inference (or at least by its rank, where inference gives up on
    some auto_pad cases)."""
    inferred = {vi.name: vi for vi in onnx.shape_inference.infer_shapes(model).graph.value_info}
    if "y" in inferred:
        model.graph.output[0].CopyFrom(inferred["y"])
    else:
        model.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * rank))
    return model
