"""The graph edit for one Gemm or MatMul (passes.matrix): `A @ W` becomes `(A @ U) @ V`, with matrix ops again.

MatMul(x, W) becomes MatMul(MatMul(x, U), V); a fitted bias correction goes into the constant of the Add that
follows it (the exported Linear layer), and is dropped where none follows (the fit knows: see passes.matrix).
Gemm(A, B, C) becomes Gemm(Gemm(A, U, transA), V, C', transB=1) with alpha folded into V and C' = beta·C + the
correction. The original node keeps its name and its output value."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onebyone.passes import matrix
from onebyone.passes.factorize import Factors
from onebyone.passes.graph_edits import Inserted, UniqueNames, constant_tensor, initializer


def insert(graph: ir.Graph, node: ir.Node, factors: Factors, names: UniqueNames, shared: dict) -> Inserted:
    """Rewrite the Gemm/MatMul `node` in place with pointwise `factors` (conv layout: B [r, K, 1...], W' [N, r, 1...])
    and return what rewrite.remove needs to undo it. `shared` caches the factor initializers per Factors object."""
    op, reason = matrix.op_of(node, factors.weight.shape[0])
    if op is None:
        raise ValueError(f"{node.op_type} {node.name!r} cannot be rewritten: {reason}")
    old_inputs, old_attributes = list(node.inputs), dict(node.attributes)
    gemm = op.op_type == "Gemm"
    key = ("matrix", id(factors))
    if key not in shared or shared[key][0] is not factors:
        r = factors.bottleneck.shape[0]
        u = factors.bottleneck.reshape(r, -1).T  # [K, r]
        v = factors.weight.reshape(factors.weight.shape[0], r)  # [N, r]
        shared[key] = (factors, initializer(graph, names(f"{node.name}.bottleneck.r{r}"), u),
                       initializer(graph, names(f"{node.name}.weight.r{r}"), v if gemm else v.T))
    _, u_val, v_val = shared[key]
    mid = _middle(node, names, u_val.shape[1], op)
    first = (ir.node("Gemm", [node.inputs[0], u_val], {"transA": int(op.trans_a)}, outputs=[mid], name=names(f"{node.name}/bottleneck"))
             if gemm else ir.node("MatMul", [node.inputs[0], u_val], outputs=[mid], name=names(f"{node.name}/bottleneck")))
    graph.insert_before(node, first)
    node.replace_input_with(0, mid)
    node.replace_input_with(1, v_val)
    delta = factors.bias_delta if factors.bias_delta is not None and np.any(factors.bias_delta) else None
    restored = []
    if gemm:
        node.attributes.update({a.name: a for a in (ir.AttrInt64("transA", 0), ir.AttrInt64("transB", 1),
                                                    ir.AttrFloat32("alpha", 1.0), ir.AttrFloat32("beta", 1.0))})
        if (len(node.inputs) > 2 and node.inputs[2] is not None) or delta is not None:
            c = op.bias + (delta if delta is not None else 0.0)
            value = initializer(graph, names(f"{node.name}.bias.corrected"), c.astype(factors.weight.dtype))
            if len(node.inputs) < 3:
                node.resize_inputs(3)
            node.replace_input_with(2, value)
    elif delta is not None and op.bias_add is not None:
        add, index = op.bias_add
        old = add.inputs[index]
        array = constant_tensor(old).numpy()
        new = initializer(graph, names(f"{node.name}.bias.corrected"),
                          (array.astype(np.float64) + delta.reshape(array.shape)).astype(array.dtype))
        add.replace_input_with(index, new)
        restored.append((add, index, old))
    return Inserted(node, old_inputs, first, old_attributes, restored=restored)


def _middle(node: ir.Node, names: UniqueNames, rank: int, op: matrix.MatrixOp) -> ir.Value:
    """The value between the two products: the input's rows (Gemm: A's, after transA) by `rank` columns."""
    x = node.inputs[0]
    mid = ir.Value(name=names(f"{node.name}.bottleneck.output"))
    if x.shape is not None and x.dtype is not None:
        dims = list(x.shape)
        rows = dims[::-1][:-1] if op.trans_a else dims[:-1]
        mid.dtype = x.dtype
        mid.shape = ir.Shape([*rows, rank])
    return mid
