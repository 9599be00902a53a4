"""Gradient rules of elementwise ops, activations and inference-mode BatchNormalization."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onebyone.calibrated.gradients.emitter import FLOAT, Emitter, Unsupported, attr, constant, rule


@rule("Cast")
def _cast(e, node, grads):
    if attr(node, "to", None) != FLOAT.value or e.dtypes.get(node.inputs[0].name) != np.float32:
        raise Unsupported("Cast other than float32 to float32")
    return [grads[0]]


@rule("Identity", "Dropout", "Reshape", "Flatten", "Squeeze", "Unsqueeze")
def _same_data(e: Emitter, node: ir.Node, grads: list) -> list:
    x = node.inputs[0]
    return [e.op("Reshape", [grads[0], e.const(np.array(e.shape(x), np.int64))])]


@rule("Relu")
def _relu(e, node, grads):
    x = e.forward(node.inputs[0])
    return [e.mask(e.op("Greater", [x, e.const(np.float32(0))]), grads[0])]


@rule("LeakyRelu")
def _leaky_relu(e, node, grads):
    x = e.forward(node.inputs[0])
    low = e.op("Mul", [grads[0], e.const(np.float32(attr(node, "alpha", 0.01)))])
    return [e.op("Where", [e.op("Greater", [x, e.const(np.float32(0))]), grads[0], low])]


@rule("Sigmoid")
def _sigmoid(e, node, grads):
    y = e.forward(node.outputs[0])
    slope = e.op("Mul", [y, e.op("Sub", [e.const(np.float32(1)), y])])
    return [e.op("Mul", [grads[0], slope])]


@rule("Tanh")
def _tanh(e, node, grads):
    y = e.forward(node.outputs[0])
    return [e.op("Mul", [grads[0], e.op("Sub", [e.const(np.float32(1)), e.op("Mul", [y, y])])])]


def _inside(e: Emitter, t: ir.Value, low: float, high: float) -> ir.Value:
    return e.op("And", [e.op("Greater", [t, e.const(np.float32(low))]), e.op("Less", [t, e.const(np.float32(high))])])


@rule("HardSigmoid")
def _hard_sigmoid(e, node, grads):
    alpha, beta = attr(node, "alpha", 0.2), attr(node, "beta", 0.5)
    t = e.op("Add", [e.op("Mul", [e.forward(node.inputs[0]), e.const(np.float32(alpha))]), e.const(np.float32(beta))])
    return [e.mask(_inside(e, t, 0, 1), e.op("Mul", [grads[0], e.const(np.float32(alpha))]))]


@rule("HardSwish")
def _hard_swish(e, node, grads):
    x = e.forward(node.inputs[0])
    t = e.op("Add", [e.op("Mul", [x, e.const(np.float32(1 / 6))]), e.const(np.float32(0.5))])
    slope = e.op("Add", [e.op("Clip", [t, e.const(np.float32(0)), e.const(np.float32(1))]),
                         e.op("Where", [_inside(e, t, 0, 1), e.op("Mul", [x, e.const(np.float32(1 / 6))]),
                                        e.const(np.float32(0))])])
    return [e.op("Mul", [grads[0], slope])]


@rule("Clip")
def _clip(e, node, grads):
    bounds = []
    for i, name, default in ((1, "min", -np.inf), (2, "max", np.inf)):
        given = node.inputs[i] if len(node.inputs) > i else None
        if given is not None and constant(given) is None:
            raise Unsupported("Clip with bounds computed at run time")
        bounds.append(float(constant(given)) if given is not None else attr(node, name, default))
    return [e.mask(_inside(e, e.forward(node.inputs[0]), *bounds), grads[0])] + [None] * (len(node.inputs) - 1)


@rule("Neg")
def _neg(e, node, grads):
    return [e.op("Neg", [grads[0]])]


def _times(e: Emitter, grad: ir.Value, slope: ir.Value) -> list:
    return [e.op("Mul", [grad, slope])]


def _f32(value: float) -> np.ndarray:
    return np.float32(value)


@rule("Exp")
def _exp(e, node, grads):
    return _times(e, grads[0], e.forward(node.outputs[0]))


@rule("Log")
def _log(e, node, grads):
    return [e.op("Div", [grads[0], e.forward(node.inputs[0])])]


@rule("Sqrt")
def _sqrt(e, node, grads):  # 1 / (2·y)
    return [e.op("Div", [grads[0], e.op("Mul", [e.forward(node.outputs[0]), e.const(_f32(2))])])]


@rule("Reciprocal")
def _reciprocal(e, node, grads):  # -y²
    y = e.forward(node.outputs[0])
    return _times(e, grads[0], e.op("Neg", [e.op("Mul", [y, y])]))


@rule("Abs")
def _abs(e, node, grads):
    return _times(e, grads[0], e.op("Sign", [e.forward(node.inputs[0])]))


@rule("Erf")
def _erf(e, node, grads):  # 2/√π · exp(-x²)
    x = e.forward(node.inputs[0])
    bell = e.op("Exp", [e.op("Neg", [e.op("Mul", [x, x])])])
    return _times(e, grads[0], e.op("Mul", [bell, e.const(_f32(2 / np.sqrt(np.pi)))]))


@rule("Softplus")
def _softplus(e, node, grads):
    return _times(e, grads[0], e.op("Sigmoid", [e.forward(node.inputs[0])]))


@rule("Elu")
def _elu(e, node, grads):  # 1 above 0, y + alpha below
    x, y = e.forward(node.inputs[0]), e.forward(node.outputs[0])
    below = e.op("Add", [y, e.const(_f32(attr(node, "alpha", 1.0)))])
    return _times(e, grads[0], e.op("Where", [e.op("Greater", [x, e.const(_f32(0))]), e.const(_f32(1)), below]))


@rule("PRelu")
def _prelu(e, node, grads):
    slope = constant(node.inputs[1])
    if slope is None:
        raise Unsupported("PRelu with a slope computed at run time")
    x = e.forward(node.inputs[0])
    low = e.op("Mul", [grads[0], e.const(slope.astype(np.float32))])
    return [e.op("Where", [e.op("Greater", [x, e.const(_f32(0))]), grads[0], low]), None]


@rule("Pow")
def _pow(e, node, grads):  # constant exponent p: p·x^(p-1)
    p = constant(node.inputs[1])
    if p is None or p.size != 1:
        raise Unsupported("Pow with an exponent computed at run time or not a scalar")
    p = float(p.reshape(()))
    x = e.forward(node.inputs[0])
    slope = e.op("Mul", [e.op("Pow", [x, e.const(_f32(p - 1))]), e.const(_f32(p))])
    return [e.op("Mul", [grads[0], slope]), None]


@rule("Where")
def _where(e, node, grads):
    cond, a, b = node.inputs
    out, zero = e.shape(node.outputs[0]), e.const(_f32(0))
    c = e.forward(cond) if constant(cond) is None else e.const(constant(cond))
    ga = e.unbroadcast(e.op("Where", [c, grads[0], zero]), e.shape(a), out) if e.wants(a) else None
    gb = e.unbroadcast(e.op("Where", [c, zero, grads[0]]), e.shape(b), out) if e.wants(b) else None
    return [None, ga, gb]


@rule("Sum")
def _sum(e, node, grads):
    out = e.shape(node.outputs[0])
    return [e.unbroadcast(grads[0], e.shape(v), out) if e.wants(v) else None for v in node.inputs]


@rule("Expand")
def _expand(e, node, grads):
    return [e.unbroadcast(grads[0], e.shape(node.inputs[0]), e.shape(node.outputs[0])), None]


@rule("Add", "Sub", "Mul", "Div")
def _arithmetic(e, node, grads):
    a, b = node.inputs
    g, out = grads[0], e.shape(node.outputs[0])
    ga = gb = None
    if node.op_type in ("Add", "Sub"):
        ga = g
        gb = g if node.op_type == "Add" else e.op("Neg", [g]) if e.wants(b) else None
    elif node.op_type == "Mul":
        ga = e.op("Mul", [g, _operand(e, b)]) if e.wants(a) else None
        gb = e.op("Mul", [g, _operand(e, a)]) if e.wants(b) else None
    else:  # d(a/b) = g/b, -g·y/b
        ga = e.op("Div", [g, _operand(e, b)]) if e.wants(a) else None
        if e.wants(b):
            gb = e.op("Neg", [e.op("Div", [e.op("Mul", [g, e.forward(node.outputs[0])]), _operand(e, b)])])
    return [e.unbroadcast(ga, e.shape(a), out) if e.wants(a) else None,
            e.unbroadcast(gb, e.shape(b), out) if e.wants(b) else None]


def _operand(e: Emitter, v: ir.Value) -> ir.Value:
    array = constant(v)
    return e.const(array) if array is not None else e.forward(v)


@rule("BatchNormalization")
def _batch_norm(e, node, grads):
    scale, var = constant(node.inputs[1]), constant(node.inputs[4])
    if scale is None or var is None or len([o for o in node.outputs if o is not None]) > 1:
        raise Unsupported("BatchNormalization in training mode or with parameters computed at run time")
    factor = (scale / np.sqrt(var + attr(node, "epsilon", 1e-5))).astype(np.float32)
    ndim = len(e.shape(node.inputs[0]))
    return [e.op("Mul", [grads[0], e.const(factor.reshape(-1, *[1] * (ndim - 2)))]), None, None, None, None]
