"""A tiny onnx.helper graph builder for generated CNNs (conv + bias + ReLU blocks, pools, a classifier head)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onebyone.models.weights import low_rank_weight, random_weight


class NetBuilder:
    """Builds a single-input NCHW float32 classifier. Spatial convs (k > 1) get low-rank weights when
    `low_rank` is a fraction in (0, 1] of their input channels per group; 1x1 convs are always random."""

    def __init__(self, in_channels: int = 3, size: int = 32, seed: int = 0, low_rank: float | None = None,
                 weights_as: str = "initializer") -> None:
        self.rng = np.random.default_rng(seed)
        self.low_rank = low_rank
        self.weights_as = weights_as
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0
        self.input = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", in_channels, size, size])

    def _name(self, stem: str) -> str:
        self.count += 1
        return f"{stem}{self.count}"

    def const(self, name: str, array: np.ndarray) -> str:
        """Add a constant (initializer or Constant node, as configured) and return its name."""
        if self.weights_as == "constant":
            self.nodes.append(helper.make_node("Constant", [], [name], name=f"{name}_const", value=numpy_helper.from_array(array, name)))
        else:
            self.inits.append(numpy_helper.from_array(array, name))
        return name

    def conv(self, x: str, c_in: int, c_out: int, k: int = 3, stride: int = 1, groups: int = 1, relu: bool = True) -> str:
        """Conv (+ bias) (+ ReLU) with 'same' padding; returns the output name."""
        name = self._name("conv")
        kernel = (k, k)
        if self.low_rank is not None and k > 1:
            rank = max(1, int(round(self.low_rank * c_in // groups)))
            w = low_rank_weight(c_out, c_in // groups, kernel, groups, rank, self.rng)
        else:
            w = random_weight(c_out, c_in // groups, kernel, self.rng)
        b = (self.rng.standard_normal(c_out) * 0.05).astype(np.float32)
        self.nodes.append(helper.make_node(
            "Conv", [x, self.const(f"{name}.weight", w), self.const(f"{name}.bias", b)], [f"{name}.out"], name=name,
            kernel_shape=list(kernel), pads=[k // 2] * 4, strides=[stride] * 2, group=groups,
        ))
        out = f"{name}.out"
        if relu:
            self.nodes.append(helper.make_node("Relu", [out], [f"{name}.relu"], name=f"{name}_relu"))
            out = f"{name}.relu"
        return out

    def op(self, op_type: str, inputs: list[str], **attrs) -> str:
        name = self._name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [f"{name}.out"], name=name, **attrs))
        return f"{name}.out"

    def head(self, x: str, c_in: int, classes: int) -> str:
        pooled = self.op("GlobalAveragePool", [x])
        flat = self.op("Flatten", [pooled], axis=1)
        w = (self.rng.standard_normal((c_in, classes)) / np.sqrt(c_in)).astype(np.float32)
        b = np.zeros(classes, np.float32)
        return self.op("Gemm", [flat, self.const("fc.weight", w.T.copy()), self.const("fc.bias", b)], transB=1)

    def model(self, out: str, name: str, opset: int = 17) -> onnx.ModelProto:
        output = helper.make_tensor_value_info(out, TensorProto.FLOAT, None)
        graph = helper.make_graph(self.nodes, name, [self.input], [output], initializer=self.inits)
        opsets = [helper.make_opsetid("", opset)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="onebyone.models")
        model.ir_version = helper.find_min_ir_version_for(opsets)
        model = onnx.shape_inference.infer_shapes(model)
        # A named output with its inferred type keeps the interface explicit.
        inferred = {vi.name: vi for vi in model.graph.value_info}
        if out in inferred:
            model.graph.output[0].CopyFrom(inferred[out])
        onnx.checker.check_model(model)
        return model
