"""Gradient rules of windowed ops: convolutions (a transposed or flipped conv), pools, reductions, nearest resizing."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onebyone.calibrated.gradients.emitter import Emitter, Unsupported, attr, constant, rule, text


def _window(node: ir.Node, kernel: list[int], x_shape, y_shape) -> tuple[list, list, list, list]:
    """Strides, dilations and the begin pads of a windowed op (auto_pad resolved), and the end pads of the
    transposed op that give back the input's size (negative: output padding)."""
    n = len(kernel)
    strides = list(attr(node, "strides", [1] * n))
    dilations = list(attr(node, "dilations", [1] * n))
    auto = text(node, "auto_pad", "NOTSET")
    begins = list(attr(node, "pads", [0] * 2 * n))[:n]
    if auto in ("SAME_UPPER", "SAME_LOWER", "VALID"):
        total = [max((o - 1) * s + d * (k - 1) + 1 - i, 0) if auto != "VALID" else 0
                 for i, o, s, d, k in zip(x_shape, y_shape, strides, dilations, kernel)]
        begins = [t // 2 if auto == "SAME_UPPER" else t - t // 2 for t in total]
    ends = [s * (o - 1) + d * (k - 1) + 1 - b - i
            for i, o, s, d, k, b in zip(x_shape, y_shape, strides, dilations, kernel, begins)]
    return strides, dilations, begins, ends


def _transposed_window(e: Emitter, g: ir.Value, weight: ir.Value, group: int, kernel, strides, dilations,
                       begins, ends) -> ir.Value:
    """ConvTranspose of `g` that maps a windowed op's output back onto its input grid."""
    pads = begins + [max(v, 0) for v in ends]
    extra = [max(-v, 0) for v in ends]
    if any(x >= max(s, d) for x, s, d in zip(extra, strides, dilations)):
        raise Unsupported("a window whose transposed size needs more output padding than its stride")
    return e.op("ConvTranspose", [g, weight], kernel_shape=list(kernel), strides=strides, dilations=dilations,
                pads=pads, output_padding=extra, group=group)


@rule("Conv")
def _conv(e, node, grads):
    w = constant(node.inputs[1])
    if w is None:
        raise Unsupported("Conv with a weight computed at run time")
    x_shape, y_shape = e.shape(node.inputs[0])[2:], e.shape(node.outputs[0])[2:]
    kernel = list(w.shape[2:])
    strides, dilations, begins, ends = _window(node, kernel, x_shape, y_shape)
    group = attr(node, "group", 1)
    reach = [d * (k - 1) for d, k in zip(dilations, kernel)]
    pads = [r - b for r, b in zip(reach, begins)] + [r - v for r, v in zip(reach, ends)]
    if set(strides) == {1} and min(pads) >= 0:  # a Conv with the kernel flipped (onnxruntime's Conv is the faster)
        gx = e.op("Conv", [grads[0], e.const(_adjoint_kernel(w, group))], kernel_shape=kernel, dilations=dilations,
                  pads=pads, group=group)
    else:
        gx = _transposed_window(e, grads[0], e.const(w.astype(np.float32)), group, kernel, strides, dilations, begins,
                                ends)
    return [gx] + [None] * (len(node.inputs) - 1)


def _adjoint_kernel(w: np.ndarray, group: int) -> np.ndarray:
    """The weight of the stride-1 Conv that is the transpose of a Conv with weight `w` [N, C/g, *k]: per group,
    output and input channels swapped and every spatial axis reversed."""
    n, c = w.shape[0] // group, w.shape[1]
    per_group = w.reshape(group, n, c, *w.shape[2:]).swapaxes(1, 2)
    flipped = per_group[(slice(None),) * 3 + (slice(None, None, -1),) * (w.ndim - 2)]
    return np.ascontiguousarray(flipped.reshape(group * c, n, *w.shape[2:]).astype(np.float32))


@rule("ConvTranspose")
def _conv_transpose(e, node, grads):
    w = constant(node.inputs[1])
    if w is None or attr(node, "output_shape", None) is not None:
        raise Unsupported("ConvTranspose with a weight computed at run time or an output_shape")
    if text(node, "auto_pad", "NOTSET") != "NOTSET":
        raise Unsupported("ConvTranspose with auto_pad")
    n = w.ndim - 2
    strides, dilations = list(attr(node, "strides", [1] * n)), list(attr(node, "dilations", [1] * n))
    pads = list(attr(node, "pads", [0] * 2 * n))
    x_shape, y_shape = e.shape(node.inputs[0])[2:], e.shape(node.outputs[0])[2:]
    # the adjoint is a Conv over the output grid; its end pads make its output the input's size exactly
    ends = [(i - 1) * s + d * (k - 1) + 1 - o - b
            for i, o, s, d, k, b in zip(x_shape, y_shape, strides, dilations, w.shape[2:], pads[:n])]
    grad = grads[0]
    if min(ends) < 0:  # output padding: the positions it adds were never written, their gradient is dropped
        keep = [o + min(v, 0) for o, v in zip(y_shape, ends)]
        grad = e.op("Slice", [grad, e.const(np.zeros(n, np.int64)), e.const(np.array(keep, np.int64)),
                              e.const(np.arange(2, 2 + n, dtype=np.int64))])
    gx = e.op("Conv", [grad, e.const(w.astype(np.float32))], kernel_shape=list(w.shape[2:]), strides=strides,
              dilations=dilations, pads=pads[:n] + [max(v, 0) for v in ends], group=attr(node, "group", 1))
    return [gx] + [None] * (len(node.inputs) - 1)


@rule("MaxPool")
def _max_pool(e, node, grads):
    if len(node.outputs) > 1 and node.outputs[1] is not None and node.outputs[1].uses():
        raise Unsupported("MaxPool whose indices are read")
    x = node.inputs[0]
    attrs = {k: v.value for k, v in node.attributes.items() if k != "storage_order"}
    _, index = e.tape.op_multi_out("MaxPool", [e.forward(x)], attrs, num_outputs=2)
    size = int(np.prod(e.shape(x)))
    flat = e.op("ScatterElements", [e.const(np.zeros(size, np.float32)), e.op("Reshape", [index, e.const(np.array(
        [-1], np.int64))]), e.op("Reshape", [grads[0], e.const(np.array([-1], np.int64))])], axis=0, reduction="add")
    return [e.op("Reshape", [flat, e.const(np.array(e.shape(x), np.int64))])]


@rule("AveragePool")
def _average_pool(e, node, grads):
    x_shape, y_shape = e.shape(node.inputs[0]), e.shape(node.outputs[0])
    kernel = list(attr(node, "kernel_shape", None))
    strides, _, begins, ends = _window(node, kernel, x_shape[2:], y_shape[2:])
    dilations = [1] * len(kernel)
    counts = _window_counts(x_shape[2:], y_shape[2:], kernel, strides, begins)
    if attr(node, "count_include_pad", 0):  # the pads count, the grid a ceil_mode window reaches past them does not
        padded = [i + b + e for i, b, e in zip(x_shape[2:], begins, _end_pads(node, x_shape[2:], begins, ends))]
        counts = _window_counts(padded, y_shape[2:], kernel, strides, [0] * len(kernel))
    scaled = e.op("Div", [grads[0], e.const(counts.astype(np.float32))])
    ones = np.ones((x_shape[1], 1, *kernel), np.float32)
    return [_transposed_window(e, scaled, e.const(ones), x_shape[1], kernel, strides, dilations, begins, ends)]


def _end_pads(node: ir.Node, x_size, begins, ends) -> list[int]:
    """The end pads a windowed op declares (auto_pad resolved; `ends`: _window's, which reach past them under
    ceil_mode)."""
    auto = text(node, "auto_pad", "NOTSET")
    if auto == "VALID":
        return [0] * len(begins)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        return [max(e, 0) for e in ends]  # SAME: the pads are what the output size needs
    declared = list(attr(node, "pads", [0] * 2 * len(begins)))[len(begins):]
    return [min(d, max(e, 0)) for d, e in zip(declared, ends)]


def _window_counts(x_size, y_size, kernel, strides, begins) -> np.ndarray:
    """Per output position of a pool, how many input positions its window covers."""
    per_axis = []
    for i, o, k, s, b in zip(x_size, y_size, kernel, strides, begins):
        start = np.arange(o) * s - b
        per_axis.append(np.clip(start + k, 0, i) - np.clip(start, 0, i))
    counts = per_axis[0]
    for c in per_axis[1:]:
        counts = np.multiply.outer(counts, c)
    return np.maximum(counts, 1)


@rule("GlobalAveragePool", "ReduceMean", "ReduceSum")
def _mean(e, node, grads):
    x_shape, y_shape = e.shape(node.inputs[0]), e.shape(node.outputs[0])
    if node.op_type != "GlobalAveragePool" and attr(node, "keepdims", 1) == 0:
        axes = constant(node.inputs[1]) if len(node.inputs) > 1 else attr(node, "axes", None)
        if axes is None:
            raise Unsupported(f"{node.op_type} without keepdims over axes computed at run time")
        kept = [1 if i in {a % len(x_shape) for a in np.atleast_1d(axes)} else d for i, d in enumerate(x_shape)]
    else:
        kept = list(y_shape)
    if len(kept) != len(x_shape) or int(np.prod(kept)) != int(np.prod(y_shape)):
        raise Unsupported(f"{node.op_type} with an unexpected output shape")
    grad = e.op("Reshape", [grads[0], e.const(np.array(kept, np.int64))])
    if node.op_type != "ReduceSum":
        grad = e.op("Mul", [grad, e.const(np.float32(np.prod(y_shape) / np.prod(x_shape)))])
    return [e.op("Expand", [grad, e.const(np.array(x_shape, np.int64))])] + [None] * (len(node.inputs) - 1)


@rule("Resize", "Upsample")
def _resize(e, node, grads):
    """Nearest-neighbour resizing by whole factors copies each input element into a block of the output (for the
    coordinate modes where it does); its transpose sums each block."""
    modern = node.op_type == "Resize" and e.opset >= 11
    coords = text(node, "coordinate_transformation_mode", "half_pixel") if modern else "asymmetric"
    nearest = text(node, "nearest_mode", "round_prefer_floor") if modern else "floor"
    blocks = (coords, nearest) == ("asymmetric", "floor") or (
        coords in ("half_pixel", "pytorch_half_pixel") and nearest in ("round_prefer_floor", "round_prefer_ceil"))
    x_shape, y_shape = e.shape(node.inputs[0]), e.shape(node.outputs[0])
    factors = [o // i if i and o % i == 0 else 0 for i, o in zip(x_shape, y_shape)]
    if text(node, "mode", "nearest") != "nearest" or not blocks or 0 in factors or factors[:2] != [1, 1]:
        raise Unsupported(f"{node.op_type} other than nearest-neighbour by whole factors")
    summed = e.op("AveragePool", [grads[0]], kernel_shape=factors[2:], strides=factors[2:])
    return [e.op("Mul", [summed, e.const(np.float32(np.prod(factors)))])] + [None] * (len(node.inputs) - 1)
