"""Gradient rules of ops that move data or multiply by a constant matrix: transposes, concatenation, slicing,
padding, splitting, matrix products, Softmax."""

from __future__ import annotations

import numpy as np

from onebyone.calibrated.gradients.emitter import Unsupported, attr, constant, rule, text


@rule("Transpose")
def _transpose(e, node, grads):
    perm = attr(node, "perm", None)
    perm = list(range(len(e.shape(node.inputs[0])))[::-1]) if perm is None else list(perm)
    return [e.op("Transpose", [grads[0]], perm=[int(i) for i in np.argsort(perm)])]


@rule("Concat")
def _concat(e, node, grads):
    sizes = [e.shape(v)[attr(node, "axis", 0) % len(e.shape(v))] for v in node.inputs]
    axis = attr(node, "axis", 0)
    parts = e.tape.op_multi_out("Split", [grads[0], e.const(np.array(sizes, np.int64))], {"axis": axis},
                                num_outputs=len(sizes))
    return list(parts)


@rule("MatMul")
def _matmul(e, node, grads):
    a, b = node.inputs
    wb, wa = constant(b), constant(a)
    if wb is not None and wb.ndim == 2:
        return [e.op("MatMul", [grads[0], e.const(np.ascontiguousarray(wb.T.astype(np.float32)))]), None]
    if wa is not None and wa.ndim == 2 and len(e.shape(b)) == 2:
        return [None, e.op("MatMul", [e.const(np.ascontiguousarray(wa.T.astype(np.float32))), grads[0]])]
    raise Unsupported("MatMul of two values computed at run time, or with a weight of more than 2 dims")


@rule("Gemm")
def _gemm(e, node, grads):
    b = constant(node.inputs[1])
    if b is None:
        raise Unsupported("Gemm with a weight computed at run time")
    b = b.T if attr(node, "transB", 0) else b  # y = alpha·op(A)·b + beta·C
    g = e.op("Mul", [grads[0], e.const(np.float32(attr(node, "alpha", 1.0)))])
    ga = e.op("MatMul", [g, e.const(np.ascontiguousarray(b.T.astype(np.float32)))])
    if attr(node, "transA", 0):
        ga = e.op("Transpose", [ga], perm=[1, 0])
    out = [ga, None]
    if len(node.inputs) > 2 and e.wants(node.inputs[2]):
        gc = e.op("Mul", [grads[0], e.const(np.float32(attr(node, "beta", 1.0)))])
        out.append(e.unbroadcast(gc, e.shape(node.inputs[2]), e.shape(node.outputs[0])))
    return out


@rule("Softmax")
def _softmax(e, node, grads):
    shape = e.shape(node.inputs[0])
    axis = attr(node, "axis", -1) % len(shape)
    if axis != len(shape) - 1:
        raise Unsupported("Softmax along an axis other than the last")
    y = e.forward(node.outputs[0])
    inner = e.op("ReduceSum", [e.op("Mul", [grads[0], y]), e.const(np.array([axis], np.int64))], keepdims=1)
    return [e.op("Mul", [y, e.op("Sub", [grads[0], inner])])]


@rule("Pad")
def _pad(e, node, grads):
    mode = text(node, "mode", "constant")
    pads = constant(node.inputs[1]) if len(node.inputs) > 1 else attr(node, "pads", None)
    axes = constant(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else None
    if mode != "constant" or pads is None or axes is not None or np.min(pads) < 0:
        raise Unsupported("Pad other than constant with fixed, non-negative pads on every axis")
    shape = e.shape(node.inputs[0])
    begins = np.asarray(pads[:len(shape)], np.int64)
    grad = e.op("Slice", [grads[0], e.const(begins), e.const(begins + np.array(shape, np.int64))])
    return [grad] + [None] * (len(node.inputs) - 1)


@rule("Slice")
def _slice(e, node, grads):
    x_shape, y_shape = e.shape(node.inputs[0]), e.shape(node.outputs[0])
    if e.opset >= 10:
        params = [constant(v) if v is not None else None for v in node.inputs[1:]]
        if any(p is None for p in params[:2]) or any(
                p is None for p, v in zip(params[2:], node.inputs[3:]) if v is not None):
            raise Unsupported("Slice with bounds computed at run time")
        starts, axes = params[0], params[2] if len(params) > 2 and params[2] is not None else None
        steps = params[3] if len(params) > 3 and params[3] is not None else None
    else:
        starts, axes, steps = attr(node, "starts", None), attr(node, "axes", None), None
    axes = range(len(starts)) if axes is None else axes
    if steps is not None and np.any(np.asarray(steps) != 1):
        raise Unsupported("Slice with steps other than 1")
    begins = [0] * len(x_shape)
    for a, s in zip(axes, starts):
        a, size = int(a) % len(x_shape), x_shape[int(a) % len(x_shape)]
        begins[a] = int(min(max(s + size if s < 0 else s, 0), size))
    ends = [i - b - o for i, b, o in zip(x_shape, begins, y_shape)]
    grad = e.op("Pad", [grads[0], e.const(np.array(begins + ends, np.int64))])
    return [grad] + [None] * (len(node.inputs) - 1)


@rule("Split")
def _split(e, node, grads):
    axis = attr(node, "axis", 0)
    parts = [g if g is not None else e.const(np.zeros(e.shape(v), np.float32)) for g, v in zip(grads, node.outputs)]
    return [e.op("Concat", parts, axis=axis)] + [None] * (len(node.inputs) - 1)
