"""The graph edit for one conv: Conv(x, W, b) becomes Conv(Conv1x1(x, B), W', b)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onebyone.passes.factorize import Factors


class UniqueNames:
    """Hands out value/initializer names not yet used in a graph, derived from a readable stem."""

    def __init__(self, graph: ir.Graph) -> None:
        self.taken = {v.name for v in graph.initializers.values()}
        self.taken |= {v.name for v in graph.inputs if v.name}
        for node in ir.traversal.RecursiveGraphIterator(graph):
            self.taken |= {v.name for v in node.outputs if v is not None and v.name}
            self.taken |= {v.name for v in node.inputs if v is not None and v.name}
            if node.name:
                self.taken.add(node.name)

    def __call__(self, stem: str) -> str:
        name, k = stem, 1
        while name in self.taken:
            name = f"{stem}_{k}"
            k += 1
        self.taken.add(name)
        return name


def insert_bottleneck(
    graph: ir.Graph, node: ir.Node, factors: Factors, names: UniqueNames, shared: dict[int, tuple[Factors, ir.Value, ir.Value]]
) -> ir.Node:
    """Rewrite `node` in place and return the inserted 1x1 conv.

    The original node keeps its name, attributes (pads, auto_pad, strides, dilations, group, kernel_shape), bias
    and outputs; only its data input and weight change. The 1x1 conv has no bias, so zero padding of its output
    equals padding of the original input. `shared` maps id(Factors) to (Factors, B, W') initializers already created for it.
    """
    x = node.inputs[0]
    groups = node.attributes.get_int("group", 1)
    ndim = factors.weight.ndim - 2
    key = id(factors)  # the dict keeps `factors` alive, so its id cannot be reused by another object
    if key not in shared or shared[key][0] is not factors:
        rank = factors.weight.shape[1]
        b_val = _initializer(graph, names(f"{node.name}.bottleneck.r{rank}"), factors.bottleneck)
        w_val = _initializer(graph, names(f"{node.name}.weight.r{rank}"), factors.weight)
        shared[key] = (factors, b_val, w_val)
    _, b_val, w_val = shared[key]
    delta = factors.bias_delta
    if delta is not None and np.any(delta):
        _correct_bias(graph, node, delta, names)
    mid = ir.Value(name=names(f"{node.name}.bottleneck.output"))
    if x.shape is not None and x.dtype is not None and len(x.shape) == ndim + 2:
        # Same as the input but with the bottleneck's channels (only when the input's type is known: older IR
        # versions require a shape for every typed value).
        mid.dtype = x.dtype
        mid.shape = ir.Shape([x.shape[0], factors.bottleneck.shape[0], *x.shape[2:]])
    squeeze = ir.node(
        "Conv",
        [x, b_val],
        {"kernel_shape": [1] * ndim, "strides": [1] * ndim, "pads": [0] * (2 * ndim), "group": groups},
        outputs=[mid],
        name=names(f"{node.name}/bottleneck"),
    )
    graph.insert_before(node, squeeze)
    node.replace_input_with(0, mid)
    node.replace_input_with(1, w_val)
    return squeeze


def remove_bottleneck(graph: ir.Graph, node: ir.Node, old_inputs: list[ir.Value | None], squeeze: ir.Node) -> None:
    """The inverse of insert_bottleneck: `node` gets back its inputs `old_inputs` (as they were before the insert),
    the inserted 1x1 conv `squeeze` is removed, and factors (and a corrected bias) nothing else uses are dropped."""
    created = list(node.inputs[1:]) + [squeeze.inputs[1]]
    for i, v in enumerate(old_inputs):
        if i < len(node.inputs):
            node.replace_input_with(i, v)
        elif v is not None:
            node.resize_inputs(i + 1)
            node.replace_input_with(i, v)
    if len(node.inputs) > len(old_inputs):
        node.resize_inputs(len(old_inputs))
    graph.remove(squeeze, safe=True)
    for v in created:
        if v is not None and v not in old_inputs:
            remove_if_unused(graph, v)


def _correct_bias(graph: ir.Graph, node: ir.Node, delta: np.ndarray, names: UniqueNames) -> None:
    """Give `node` the bias old + delta (a new initializer; a conv without bias gets one). A bias that is not a
    constant is left as it is."""
    old = node.inputs[2] if len(node.inputs) > 2 else None
    if old is not None:
        tensor = ir.convenience.get_const_tensor(old)
        if tensor is None:
            return
        base = tensor.numpy().astype(np.float64)
    else:
        base = np.zeros(delta.shape, np.float64)
    value = _initializer(graph, names(f"{node.name}.bias.corrected"), (base + delta).astype(delta.dtype))
    if old is None:
        node.resize_inputs(3)
    node.replace_input_with(2, value)


def _initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    value = ir.Value(name=name, const_value=ir.tensor(np.ascontiguousarray(array), name=name))
    value.shape = ir.Shape(array.shape)
    value.dtype = ir.DataType.from_numpy(array.dtype)
    graph.register_initializer(value)
    return value


def remove_if_unused(graph: ir.Graph, value: ir.Value) -> None:
    """Drop an initializer or Constant node output that nothing uses any more (graph inputs/outputs stay)."""
    if value.uses() or value.is_graph_output() or value.is_graph_input():
        return
    if value.is_initializer():
        graph.initializers.pop(value.name, None)
        return
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and producer.graph is graph:
        graph.remove(producer, safe=True)
