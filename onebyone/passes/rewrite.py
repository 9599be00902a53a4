"""The graph edit for one conv. Input form: Conv(x, W, b) becomes Conv(Conv1x1(x, B), W', b). Output form: it
becomes Conv1x1(Conv(x, R), E, b). Tucker-2: Conv1x1(Conv(Conv1x1(x, V), core), U, b). The original node keeps its
name and its output value."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onebyone.passes import matrix_rewrite
from onebyone.passes.factorize import Factors
from onebyone.passes.graph_edits import Inserted, UniqueNames, constant_tensor, identity_source, initializer


def insert_bottleneck(
    graph: ir.Graph, node: ir.Node, factors: Factors, names: UniqueNames, shared: dict[int, tuple[Factors, ir.Value, ir.Value]]
) -> ir.Node:
    """Rewrite `node` in place and return the inserted 1x1 conv.

    The original node keeps its name, attributes (pads, auto_pad, strides, dilations, group, kernel_shape), bias
    and outputs; only its data input and weight change. The 1x1 conv has no bias, so zero padding of its output
    equals padding of the original input. `shared` maps id(Factors) to (Factors, B, W') initializers already created for it.
    """
    b_val, w_val = _factor_values(graph, node, factors, names, shared, ("bottleneck", "weight"))
    squeeze = _insert_squeeze(graph, node, b_val, names, "bottleneck")
    node.replace_input_with(1, w_val)
    return squeeze


def _insert_squeeze(graph: ir.Graph, node: ir.Node, weight: ir.Value, names: UniqueNames, stem: str) -> ir.Node:
    """A 1x1 conv with `weight` (no bias, `node`'s group) inserted before `node`, which then reads its output."""
    x = node.inputs[0]
    ndim = len(weight.shape) - 2
    mid = ir.Value(name=names(f"{node.name}.{stem}.output"))
    if x.shape is not None and x.dtype is not None and len(x.shape) == ndim + 2:
        # Same as the input but with the squeeze's channels (only when the input's type is known: older IR
        # versions require a shape for every typed value).
        mid.dtype = x.dtype
        mid.shape = ir.Shape([x.shape[0], weight.shape[0], *x.shape[2:]])
    squeeze = ir.node(
        "Conv",
        [x, weight],
        {"kernel_shape": [1] * ndim, "strides": [1] * ndim, "pads": [0] * (2 * ndim),
         "group": node.attributes.get_int("group", 1)},
        outputs=[mid],
        name=names(f"{node.name}/{stem}"),
    )
    graph.insert_before(node, squeeze)
    node.replace_input_with(0, mid)
    return squeeze


def _factor_values(graph: ir.Graph, node: ir.Node, factors: Factors, names: UniqueNames, shared: dict,
                   stems: tuple[str, str]) -> tuple[ir.Value, ir.Value]:
    """The initializers of both factors (created once per Factors object: `shared` maps id(factors) to (factors,
    first, second); the dict keeps `factors` alive, so its id cannot be reused), and `node`'s bias corrected by
    factors.bias_delta."""
    key = id(factors)
    if key not in shared or shared[key][0] is not factors:
        first = initializer(graph, names(f"{node.name}.{stems[0]}.r{factors.rank}"), factors.bottleneck)
        second = initializer(graph, names(f"{node.name}.{stems[1]}.r{factors.rank}"), factors.weight)
        shared[key] = (factors, first, second)
    delta = factors.bias_delta
    if delta is not None and np.any(delta):
        _correct_bias(graph, node, delta, names)
    return shared[key][1], shared[key][2]


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
        tensor = constant_tensor(old)
        if tensor is None:
            return
        base = tensor.numpy().astype(np.float64)
    else:
        base = np.zeros(delta.shape, np.float64)
    value = initializer(graph, names(f"{node.name}.bias.corrected"), (base + delta).astype(delta.dtype))
    if old is None:
        node.resize_inputs(3)
    node.replace_input_with(2, value)


def remove_if_unused(graph: ir.Graph, value: ir.Value) -> None:
    """Drop an initializer, a Constant node output or an Identity copy of a constant that nothing uses any more
    (graph inputs/outputs stay; an Identity's source is dropped too when nothing else uses it)."""
    if value.uses() or value.is_graph_output() or value.is_graph_input():
        return
    if value.is_initializer():
        graph.initializers.pop(value.name, None)
        return
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and producer.graph is graph:
        graph.remove(producer, safe=True)
    elif producer is not None and producer.graph is graph and identity_source(value) is not value \
            and constant_tensor(value) is not None:
        source = producer.inputs[0]  # an Identity copying a constant (an exporter's shared tensor)
        graph.remove(producer, safe=True)
        remove_if_unused(graph, source)


def insert(graph: ir.Graph, node: ir.Node, factors: Factors, names: UniqueNames, shared: dict) -> Inserted:
    """Rewrite `node` in place with `factors` of any form (insert_bottleneck, or insert_first for the output and
    spatial forms; Tucker-2: a squeeze, then insert_first of its core and expansion; a Gemm or MatMul: two matrix
    products, see passes.matrix_rewrite)."""
    if node.op_type != "Conv":
        return matrix_rewrite.insert(graph, node, factors, names, shared)
    old_inputs = list(node.inputs)
    if factors.form == "tucker2":
        old_attributes = dict(node.attributes)
        key = ("tucker2", id(factors))
        if key not in shared or shared[key][0] is not factors:  # one squeeze and one inner Factors per Factors
            inner = Factors(factors.weight, factors.expand, factors.rel_error, factors.bias_delta,
                            factors.predicted_error, form="output")
            shared[key] = (factors, inner, initializer(graph, names(f"{node.name}.squeeze.r{factors.rank}"),
                                                        factors.bottleneck))
        _, inner, squeeze_weight = shared[key]
        squeeze = _insert_squeeze(graph, node, squeeze_weight, names, "squeeze")
        core = insert_first(graph, node, inner, names, shared)
        return Inserted(node, old_inputs, core, old_attributes, squeeze)
    if factors.form in ("output", "spatial"):
        old_attributes = dict(node.attributes)
        return Inserted(node, old_inputs, insert_first(graph, node, factors, names, shared), old_attributes)
    return Inserted(node, old_inputs, insert_bottleneck(graph, node, factors, names, shared))


def remove(graph: ir.Graph, done: Inserted) -> None:
    """Undo `insert`: the node as it was, the inserted node and the factors nothing else uses gone."""
    if done.old_attributes is not None:
        done.node.attributes.clear()
        done.node.attributes.update(done.old_attributes)
    remove_bottleneck(graph, done.node, done.old_inputs, done.added)
    if done.squeeze is not None:
        weight = done.squeeze.inputs[1]
        graph.remove(done.squeeze, safe=True)
        remove_if_unused(graph, weight)
    for node, index, old in done.restored:
        new = node.inputs[index]
        node.replace_input_with(index, old)
        remove_if_unused(graph, new)


def split_attributes(form: str, kernel, strides, dilations, pads, auto_pad: str, group: int) -> tuple[dict, dict]:
    """The attributes of the two convs that replace a conv with these, in the output or spatial form, as plain values
    (int lists, the auto_pad string, the group): the output form keeps the conv's geometry on the first conv and makes
    the second a 1x1; the spatial form gives the first conv (kh x 1, or kd x 1 x 1 in 3D) the first axis's strides,
    dilations and pads and the second (1 x kw, or 1 x kh x kw) the other axes'. auto_pad SAME/VALID stays on both
    (each axis's padding depends on that axis alone), in place of pads. Both keep the group."""
    nd = len(kernel)
    auto = auto_pad not in ("NOTSET", "")
    if form == "output":
        first = {"kernel_shape": list(kernel), "strides": list(strides), "dilations": list(dilations), "pads": list(pads)}
        second = {"kernel_shape": [1] * nd, "strides": [1] * nd, "dilations": [1] * nd, "pads": [0] * (2 * nd)}
        if auto:
            del first["pads"]
            first["auto_pad"] = auto_pad
    else:
        ones, zeros = [1] * (nd - 1), [0] * (nd - 1)
        first = {"kernel_shape": [kernel[0], *ones], "strides": [strides[0], *ones],
                 "dilations": [dilations[0], *ones], "pads": [pads[0], *zeros, pads[nd], *zeros]}
        second = {"kernel_shape": [1, *kernel[1:]], "strides": [1, *strides[1:nd]], "dilations": [1, *dilations[1:nd]],
                  "pads": [0, *pads[1:nd], 0, *pads[nd + 1:]]}
        if auto:
            del first["pads"], second["pads"]
            first["auto_pad"] = second["auto_pad"] = auto_pad
    return {**first, "group": group}, {**second, "group": group}


def _node_split(node: ir.Node, factors: Factors) -> tuple[list[ir.Attr], list[ir.Attr]]:
    """split_attributes for `node` (its attributes, with the ONNX defaults where absent), as onnx-ir attributes."""
    nd = factors.weight.ndim - 2
    ints = lambda key, default: list(node.attributes[key].as_ints()) if key in node.attributes else default  # noqa: E731
    kernel = list(factors.bottleneck.shape[2:]) if factors.form == "output" else [factors.bottleneck.shape[2],
                                                                                  *factors.weight.shape[3:]]
    split = split_attributes(factors.form, kernel, ints("strides", [1] * nd), ints("dilations", [1] * nd),
                             ints("pads", [0] * (2 * nd)), node.attributes.get_string("auto_pad", "NOTSET"),
                             node.attributes.get_int("group", 1))
    convert = {list: ir.AttrInt64s, str: ir.AttrString, int: ir.AttrInt64}
    return tuple([convert[type(v)](k, v) for k, v in attrs.items()] for attrs in split)


def insert_first(graph: ir.Graph, node: ir.Node, factors: Factors, names: UniqueNames, shared: dict) -> ir.Node:
    """Output and spatial forms: a new conv with weight `factors.bottleneck` (no bias) is inserted before `node`,
    which then applies `factors.weight` to its output, keeping its bias (corrected by bias_delta), group, name and
    output value (attributes split by split_attributes). Returns the inserted conv."""
    x = node.inputs[0]
    ndim = factors.weight.ndim - 2
    stems = ("reduced", "expand") if factors.form == "output" else ("vertical", "horizontal")
    first_val, second_val = _factor_values(graph, node, factors, names, shared, stems)
    stem = stems[0]
    mid = ir.Value(name=names(f"{node.name}.{stem}.output"))
    y = node.outputs[0]
    if factors.form == "output" and y.shape is not None and y.dtype is not None and len(y.shape) == ndim + 2:
        mid.dtype = y.dtype
        mid.shape = ir.Shape([y.shape[0], factors.bottleneck.shape[0], *y.shape[2:]])
    first_attrs, node_attrs = _node_split(node, factors)
    first = ir.Node("", "Conv", [x, first_val], attributes=first_attrs, outputs=[mid], name=names(f"{node.name}/{stem}"))
    graph.insert_before(node, first)
    node.attributes.clear()
    node.attributes.update({a.name: a for a in node_attrs})
    node.replace_input_with(0, mid)
    node.replace_input_with(1, second_val)
    return first
