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
