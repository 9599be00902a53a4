"""How a gradient flows back through each ONNX op: one rule per op type, each emitting the ops of the transposed
(vector-Jacobian) product at opset BACKWARD_OPSET, whatever the forward model's opset.

A rule gets the forward node and the gradients of its outputs (None for outputs nothing downstream reads) and
returns a gradient per input (None where none flows: constants, indices, shapes). Forward values a rule reads (a
ReLU's input, a Sigmoid's output) become inputs of the backward model. An op without a rule, or a form of one a
rule does not cover (a weight computed at run time, a bilinear Resize), raises Unsupported naming it: the caller
then measures the other way.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir

BACKWARD_OPSET = 17
FLOAT = ir.DataType.FLOAT


class Unsupported(Exception):
    """The backward model cannot be built: the message names the op and why."""


class Emitter:
    """What a rule builds with: ops at BACKWARD_OPSET, constants, the forward values it reads, their static shapes.
    `shapes`, `dtypes`: every value's (measured); `forward`: called with a forward value, returns it as a backward
    input; `opset`: the forward model's (attribute defaults changed with it)."""

    def __init__(self, tape: ir.tape.Tape, shapes: dict[str, tuple[int, ...]], dtypes: dict[str, np.dtype],
                 forward: Callable[[ir.Value], ir.Value], opset: int) -> None:
        self.tape = tape
        self.dtypes = dtypes
        self.opset = opset
        self.shapes = shapes
        self.forward = forward
        self.needed: set[str] = set()
        self._count = 0

    def wants(self, value: ir.Value | None) -> bool:
        """Whether a gradient of `value` is needed (rules skip the others' work)."""
        return value is not None and value.name in self.needed

    def op(self, op_type: str, inputs: list, **attrs) -> ir.Value:
        return self.tape.op(op_type, inputs, attrs or None)

    def const(self, array) -> ir.Value:
        self._count += 1
        array = np.asarray(array)
        return self.tape.initializer(ir.tensor(array), name=f"bw.const.{self._count}")

    def shape(self, value: ir.Value) -> tuple[int, ...]:
        if value.name not in self.shapes:
            raise Unsupported(f"the shape of {value.name!r} is unknown")
        return self.shapes[value.name]

    def mask(self, condition: ir.Value, grad: ir.Value) -> ir.Value:
        """`grad` where `condition` holds, 0 elsewhere."""
        return self.op("Where", [condition, grad, self.const(np.float32(0))])

    def unbroadcast(self, grad: ir.Value, to: tuple[int, ...], of: tuple[int, ...]) -> ir.Value:
        """`grad` of a broadcast result of shape `of`, summed back to an operand of shape `to`."""
        if tuple(to) == tuple(of):
            return grad
        lead = len(of) - len(to)
        axes = list(range(lead)) + [lead + i for i, d in enumerate(to) if d == 1 and of[lead + i] != 1]
        if axes:
            grad = self.op("ReduceSum", [grad, self.const(np.array(axes, np.int64))], keepdims=1)
        return self.op("Reshape", [grad, self.const(np.array(to, np.int64))])


def constant(value: ir.Value | None) -> np.ndarray | None:
    """The array of a value known before the model runs (an initializer or a Constant's output), else None."""
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def _attr(node: ir.Node, name: str, default):
    a = node.attributes.get(name)
    return default if a is None else a.value


Rule = Callable[[Emitter, ir.Node, list], list]
RULES: dict[str, Rule] = {}


def rule(*ops: str):
    def register(fn: Rule) -> Rule:
        for op in ops:
            RULES[op] = fn
        return fn
    return register


# ---- elementwise ----------------------------------------------------------------------------------------------------
@rule("Cast")
def _cast(e, node, grads):
    if _attr(node, "to", None) != FLOAT.value or e.dtypes.get(node.inputs[0].name) != np.float32:
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
    low = e.op("Mul", [grads[0], e.const(np.float32(_attr(node, "alpha", 0.01)))])
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
    alpha, beta = _attr(node, "alpha", 0.2), _attr(node, "beta", 0.5)
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
        bounds.append(float(constant(given)) if given is not None else _attr(node, name, default))
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
    below = e.op("Add", [y, e.const(_f32(_attr(node, "alpha", 1.0)))])
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
    factor = (scale / np.sqrt(var + _attr(node, "epsilon", 1e-5))).astype(np.float32)
    ndim = len(e.shape(node.inputs[0]))
    return [e.op("Mul", [grads[0], e.const(factor.reshape(-1, *[1] * (ndim - 2)))]), None, None, None, None]


# ---- convolutions and pools -----------------------------------------------------------------------------------------
def _window(node: ir.Node, kernel: list[int], x_shape, y_shape) -> tuple[list, list, list, list]:
    """Strides, dilations and the begin pads of a windowed op (auto_pad resolved), and the end pads of the
    transposed op that give back the input's size (negative: output padding)."""
    n = len(kernel)
    strides = list(_attr(node, "strides", [1] * n))
    dilations = list(_attr(node, "dilations", [1] * n))
    auto = _text(node, "auto_pad", "NOTSET")
    begins = list(_attr(node, "pads", [0] * 2 * n))[:n]
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
    group = _attr(node, "group", 1)
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
    if w is None or _attr(node, "output_shape", None) is not None:
        raise Unsupported("ConvTranspose with a weight computed at run time or an output_shape")
    if _text(node, "auto_pad", "NOTSET") != "NOTSET":
        raise Unsupported("ConvTranspose with auto_pad")
    n = w.ndim - 2
    strides, dilations = list(_attr(node, "strides", [1] * n)), list(_attr(node, "dilations", [1] * n))
    pads = list(_attr(node, "pads", [0] * 2 * n))
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
              dilations=dilations, pads=pads[:n] + [max(v, 0) for v in ends], group=_attr(node, "group", 1))
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
    kernel = list(_attr(node, "kernel_shape", None))
    strides, _, begins, ends = _window(node, kernel, x_shape[2:], y_shape[2:])
    dilations = [1] * len(kernel)
    counts = _window_counts(x_shape[2:], y_shape[2:], kernel, strides, begins)
    if _attr(node, "count_include_pad", 0):
        pads_end = [(o - 1) * s + k - b - i for i, o, s, k, b in zip(x_shape[2:], y_shape[2:], strides, kernel, begins)]
        counts = _window_counts([i + b + max(p, 0) for i, b, p in zip(x_shape[2:], begins, pads_end)], y_shape[2:],
                                kernel, strides, [0] * len(kernel))  # padded grid: every window full but past it
    scaled = e.op("Div", [grads[0], e.const(counts.astype(np.float32))])
    ones = np.ones((x_shape[1], 1, *kernel), np.float32)
    return [_transposed_window(e, scaled, e.const(ones), x_shape[1], kernel, strides, dilations, begins, ends)]


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
    if node.op_type != "GlobalAveragePool" and _attr(node, "keepdims", 1) == 0:
        axes = constant(node.inputs[1]) if len(node.inputs) > 1 else _attr(node, "axes", None)
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


def _text(node: ir.Node, name: str, default: str) -> str:
    value = _attr(node, name, default)
    return value.decode() if isinstance(value, bytes) else value


@rule("Resize", "Upsample")
def _resize(e, node, grads):
    """Nearest-neighbour resizing by whole factors copies each input element into a block of the output (for the
    coordinate modes where it does); its transpose sums each block."""
    modern = node.op_type == "Resize" and e.opset >= 11
    coords = _text(node, "coordinate_transformation_mode", "half_pixel") if modern else "asymmetric"
    nearest = _text(node, "nearest_mode", "round_prefer_floor") if modern else "floor"
    blocks = (coords, nearest) == ("asymmetric", "floor") or (
        coords in ("half_pixel", "pytorch_half_pixel") and nearest in ("round_prefer_floor", "round_prefer_ceil"))
    x_shape, y_shape = e.shape(node.inputs[0]), e.shape(node.outputs[0])
    factors = [o // i if i and o % i == 0 else 0 for i, o in zip(x_shape, y_shape)]
    if _text(node, "mode", "nearest") != "nearest" or not blocks or 0 in factors or factors[:2] != [1, 1]:
        raise Unsupported(f"{node.op_type} other than nearest-neighbour by whole factors")
    summed = e.op("AveragePool", [grads[0]], kernel_shape=factors[2:], strides=factors[2:])
    return [e.op("Mul", [summed, e.const(np.float32(np.prod(factors)))])] + [None] * (len(node.inputs) - 1)


# ---- shuffles and linear maps ---------------------------------------------------------------------------------------
@rule("Transpose")
def _transpose(e, node, grads):
    perm = _attr(node, "perm", None)
    perm = list(range(len(e.shape(node.inputs[0])))[::-1]) if perm is None else list(perm)
    return [e.op("Transpose", [grads[0]], perm=[int(i) for i in np.argsort(perm)])]


@rule("Concat")
def _concat(e, node, grads):
    sizes = [e.shape(v)[_attr(node, "axis", 0) % len(e.shape(v))] for v in node.inputs]
    axis = _attr(node, "axis", 0)
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
    b = b.T if _attr(node, "transB", 0) else b  # y = alpha·op(A)·b + beta·C
    g = e.op("Mul", [grads[0], e.const(np.float32(_attr(node, "alpha", 1.0)))])
    ga = e.op("MatMul", [g, e.const(np.ascontiguousarray(b.T.astype(np.float32)))])
    if _attr(node, "transA", 0):
        ga = e.op("Transpose", [ga], perm=[1, 0])
    out = [ga, None]
    if len(node.inputs) > 2 and e.wants(node.inputs[2]):
        gc = e.op("Mul", [grads[0], e.const(np.float32(_attr(node, "beta", 1.0)))])
        out.append(e.unbroadcast(gc, e.shape(node.inputs[2]), e.shape(node.outputs[0])))
    return out


@rule("Softmax")
def _softmax(e, node, grads):
    shape = e.shape(node.inputs[0])
    axis = _attr(node, "axis", -1) % len(shape)
    if axis != len(shape) - 1:
        raise Unsupported("Softmax along an axis other than the last")
    y = e.forward(node.outputs[0])
    inner = e.op("ReduceSum", [e.op("Mul", [grads[0], y]), e.const(np.array([axis], np.int64))], keepdims=1)
    return [e.op("Mul", [y, e.op("Sub", [grads[0], inner])])]


@rule("Pad")
def _pad(e, node, grads):
    mode = _text(node, "mode", "constant")
    pads = constant(node.inputs[1]) if len(node.inputs) > 1 else _attr(node, "pads", None)
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
        starts, axes, steps = _attr(node, "starts", None), _attr(node, "axes", None), None
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
    axis = _attr(node, "axis", 0)
    parts = [g if g is not None else e.const(np.zeros(e.shape(v), np.float32)) for g, v in zip(grads, node.outputs)]
    return [e.op("Concat", parts, axis=axis)] + [None] * (len(node.inputs) - 1)


# ops whose outputs do not vary smoothly with their inputs: no gradient flows through them
NO_GRADIENT = {"Shape", "Size", "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Not", "And", "Or", "Xor",
               "ArgMax", "ArgMin", "NonZero", "ConstantOfShape", "IsNaN", "IsInf", "Sign", "Floor", "Ceil", "Round"}


def rule_for(node: ir.Node) -> Rule:
    """The rule of `node`'s op (Unsupported when there is none)."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in RULES:
        raise Unsupported(f"no gradient rule for {node.domain + '::' if node.domain else ''}{node.op_type}")
    return RULES[node.op_type]
