"""The pieces every graph edit of onebyone shares: fresh names, new initializers, and the record that undoes an edit."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir


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


def identity_source(value: ir.Value | None) -> ir.Value | None:
    """The value an Identity chain ending in `value` copies (`value` itself when no Identity produces it):
    exporters share one tensor among several users through Identity nodes (torch.onnx deduplicates equal
    initializers so)."""
    for _ in range(64):  # a chain of Identity nodes, not a cycle (a valid graph has none)
        producer = value.producer() if value is not None else None
        if producer is None or producer.op_type != "Identity" or producer.domain not in ("", "ai.onnx") \
                or not producer.inputs or producer.inputs[0] is None:
            return value
        value = producer.inputs[0]
    return value


def constant_tensor(value: ir.Value | None) -> ir.TensorProtocol | None:
    """The constant `value` holds: an initializer's or a Constant node's tensor, directly or through Identity nodes;
    None when it is computed at run time, or when an Identity copies a graph input (overridable at run time)."""
    if value is None:
        return None
    source = identity_source(value)
    if source is not value and source.is_graph_input():
        return None
    return ir.convenience.get_const_tensor(source)


def initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    """A new initializer `name` holding `array`, registered in `graph`."""
    value = ir.Value(name=name, const_value=ir.tensor(np.ascontiguousarray(array), name=name))
    value.shape = ir.Shape(array.shape)
    value.dtype = ir.DataType.from_numpy(array.dtype)
    graph.register_initializer(value)
    return value


@dataclasses.dataclass
class Inserted:
    """One rewrite in the graph, with what `remove` needs to undo it: the rewritten node, its inputs and attributes
    before, and the node inserted before it."""

    node: ir.Node
    old_inputs: list
    added: ir.Node
    old_attributes: dict | None = None  # output form: the conv's attributes (it became the 1x1)
    squeeze: ir.Node | None = None  # Tucker-2: the 1x1 squeeze inserted before `added` (the core conv)
    restored: list = dataclasses.field(default_factory=list)  # (node, input index, old value) changed elsewhere
