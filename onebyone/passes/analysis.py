"""Analysis of every Conv node: geometry, cost, where its weight comes from, and its singular values.

Nothing here changes the model. Each conv gets either the facts a rewrite needs or a reason it cannot be one.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx_ir as ir

from onebyone.passes import cost, factorize, initializer_inputs, matrix
from onebyone.passes.graph_edits import constant_tensor, identity_source
from onebyone.passes.shapes import static_shapes

QUANTIZED_PRODUCERS = {"DequantizeLinear", "DynamicQuantizeLinear", "QuantizeLinear"}


@dataclasses.dataclass
class ConvInfo:
    """What onebyone knows about one Conv node (or a Gemm/MatMul with a constant weight, read as the pointwise conv it
    is: see passes.matrix). `skip_reason` is None for rewrite candidates.

    `svals` holds, per group, the singular values of the weight unfolded along its input channels.
    """

    name: str
    node: ir.Node = dataclasses.field(repr=False)
    matrix: matrix.MatrixOp | None = dataclasses.field(default=None, repr=False)  # Gemm/MatMul: how it maps to a conv
    kernel: tuple[int, ...] = ()
    in_channels: int = 0
    out_channels: int = 0
    groups: int = 1
    strides: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    auto_pad: str = "NOTSET"
    input_shape: tuple[int, ...] | None = None
    output_shape: tuple[int, ...] | None = None
    weight_source: str = "unknown"
    weight_dtype: str = ""
    weight_users: int = 1
    has_bias: bool = False
    weight: np.ndarray | None = dataclasses.field(default=None, repr=False)
    svals: list[np.ndarray] = dataclasses.field(default_factory=list, repr=False)
    svals_output: list[np.ndarray] = dataclasses.field(default_factory=list, repr=False)
    svals_spatial: list[np.ndarray] = dataclasses.field(default_factory=list, repr=False)
    forms: tuple[str, ...] = ()  # the enabled forms that can lower this conv's MACs (candidates only)
    form_note: str | None = None  # why the other enabled forms cannot (when some cannot)
    skip_reason: str | None = None

    @property
    def op_type(self) -> str:
        """The node's op: "Conv", or "Gemm"/"MatMul" (read as a pointwise conv)."""
        return self.node.op_type

    @property
    def spatial_in(self) -> int:
        """Input positions per batch item (a matrix op: its rows per item, passes.matrix.rows_per_item)."""
        if self.matrix is not None and self.input_shape:
            return self.matrix.positions
        return math.prod(self.input_shape[2:]) if self.input_shape else 0

    @property
    def spatial_out(self) -> int:
        """Output positions per batch item (a matrix op: its rows per item)."""
        if self.matrix is not None and self.output_shape:
            return self.matrix.positions
        return math.prod(self.output_shape[2:]) if self.output_shape else 0

    @property
    def kernel_size(self) -> int:
        return math.prod(self.kernel)

    @property
    def spatial_taps(self) -> tuple[int, int]:
        """The spatial form's taps: (along the first axis, along the others together)."""
        return self.kernel[0], math.prod(self.kernel[1:])

    @property
    def macs(self) -> int:
        """MACs per batch item (0 when the spatial sizes are unknown)."""
        return cost.conv_macs(self.spatial_out, self.out_channels, self.in_channels, self.groups, self.kernel_size)

    @property
    def params(self) -> int:
        return self.out_channels * (self.in_channels // max(self.groups, 1)) * self.kernel_size + (
            self.out_channels if self.has_bias else 0
        )

    @property
    def break_even_rank(self) -> float:
        if not self.output_shape:
            return 0.0
        return cost.break_even_rank(
            self.spatial_in, self.spatial_out, self.out_channels, self.in_channels, self.groups, self.kernel_size
        )

    @property
    def matrix_shape(self) -> tuple[int, int]:
        """Shape of each group's unfolded weight matrix."""
        return self.in_channels // self.groups, (self.out_channels // self.groups) * self.kernel_size

    def matrix_shape_of(self, form: str) -> tuple[int, int]:
        """Shape of each group's matrix unfolded for `form` (output form: N/g x C/g·K; Tucker-2: the rank knob's
        range, the larger channel side, by the other side times the kernel)."""
        if form == "tucker2":
            cpg, npg = self.in_channels // self.groups, self.out_channels // self.groups
            return max(cpg, npg), min(cpg, npg) * self.kernel_size
        if form == "output":
            return self.out_channels // self.groups, (self.in_channels // self.groups) * self.kernel_size
        if form == "spatial":
            first, other = self.spatial_taps
            return self.in_channels // self.groups * first, self.out_channels // self.groups * other
        return self.matrix_shape

    def svals_of(self, form: str) -> list[np.ndarray]:
        """The weight's per-group singular values unfolded for `form`."""
        return {"output": self.svals_output, "spatial": self.svals_spatial}.get(form, self.svals)

    def tucker2_ranks(self, rank: int) -> tuple[int, int]:
        """The per-group (input-side, output-side) ranks of the Tucker-2 form at rank knob `rank`."""
        return factorize.tucker2_ranks(self.in_channels // self.groups, self.out_channels // self.groups, rank)

    def break_even(self, form: str) -> float:
        """The per-group rank at which `form` costs as much as the conv (ranks below it lower MACs; Tucker-2: the
        smallest rank knob that does not, its MACs growing with both ranks)."""
        if form in ("input", "pointwise"):
            return self.break_even_rank
        if form == "tucker2":
            top = self.matrix_shape_of(form)[0]
            if not self.output_shape:
                return 0.0
            return float(next((r for r in range(1, top + 1) if self.macs_of(form, r) >= self.macs), top + 1))
        per_rank = self.macs_of(form, 1) if self.output_shape else 0
        return self.macs / per_rank if per_rank else 0.0

    def macs_of(self, form: str, rank: int) -> int:
        """MACs of `form` at per-group `rank` (Tucker-2: at rank knob `rank`)."""
        if form == "tucker2":
            return cost.tucker2_macs(self.spatial_in, self.spatial_out, self.out_channels, self.in_channels,
                                     self.groups, self.kernel_size, *self.tucker2_ranks(rank))
        if form == "output":
            return cost.output_macs(self.spatial_out, self.out_channels, self.in_channels, self.groups,
                                    self.kernel_size, rank)
        if form == "spatial":
            first_positions = self.output_shape[2] * int(np.prod(self.input_shape[3:]))
            return cost.spatial_macs(first_positions, self.spatial_out, self.out_channels, self.in_channels,
                                     self.groups, *self.spatial_taps, rank)
        return cost.bottleneck_macs(self.spatial_in, self.spatial_out, self.out_channels, self.in_channels,
                                    self.groups, self.kernel_size, rank)


def conv_nodes(model: ir.Model, matrices: bool = False) -> list[ir.Node]:
    """Every default-domain Conv node of the model (with `matrices`, also every Gemm/MatMul whose second operand is a
    weight: a constant, or one quantized or cast at run time), main graph first, in graph order, named uniquely.

    Unnamed nodes get the name '<op>_<k>' (k counts them), so reports and rewritten nodes are readable.
    """
    nodes = [n for n in ir.traversal.RecursiveGraphIterator(model.graph) if n.domain in ("", "ai.onnx") and (
        n.op_type == "Conv" or matrices and n.op_type in matrix.MATRIX_OPS and _has_weight(n))]
    taken = {n.name for n in ir.traversal.RecursiveGraphIterator(model.graph) if n.name}
    for k, n in enumerate(nodes):
        if not n.name:
            name = f"{n.op_type}_{k}"
            while name in taken:
                name += "_"
            n.name = name
            taken.add(name)
    return nodes


def _has_weight(node: ir.Node) -> bool:
    """Whether a matrix op's second operand is a weight rather than an activation (attention's products are not)."""
    b = node.inputs[1] if len(node.inputs) > 1 else None
    if b is None or b.is_graph_input():
        return False
    producer = b.producer()
    return b.const_value is not None or producer is not None and producer.op_type in (
        "Constant", "Cast", *QUANTIZED_PRODUCERS)


def _ints(node: ir.Node, key: str, default: list[int]) -> tuple[int, ...]:
    attr = node.attributes.get(key)
    return tuple(attr.as_ints()) if attr is not None else tuple(default)


def _static_dims(value: ir.Value | None) -> tuple[int, ...] | None:
    if value is None or value.shape is None or not all(isinstance(d, int) for d in value.shape):
        return None
    return tuple(value.shape)


def _weight_tensor(node: ir.Node, info: ConvInfo) -> np.ndarray | None:
    """The conv's constant weight, recording its source; None (with skip_reason set) when not constant."""
    w = node.inputs[1] if len(node.inputs) > 1 else None
    if w is None:
        info.skip_reason = "conv has no weight input"
        return None
    info.weight_users = len(w.uses())
    if w.is_graph_input():
        info.weight_source = "graph input"
        info.skip_reason = "weight is a graph input (can be overridden at run time), not a constant"
        if w.is_initializer():
            info.skip_reason = ("weight is a graph input with a default initializer (can be overridden at run time), "
                                f"not a constant: {initializer_inputs.OPTION} makes such weights constants")
        return None
    tensor = constant_tensor(w)
    producer = w.producer()
    if tensor is None:
        if producer is not None and producer.op_type in QUANTIZED_PRODUCERS:
            info.weight_source = producer.op_type
            info.skip_reason = f"quantized weight (produced by {producer.op_type}); factorizing would change the quantization"
        elif producer is not None and producer.op_type == "Cast":
            source = producer.inputs[0] if producer.inputs else None
            dtype = source.dtype if source is not None and source.dtype is not None else None
            info.weight_source = "Cast"
            info.skip_reason = (f"weight is cast at run time (Cast from {dtype.name.lower() if dtype else 'another type'}), "
                                "not a constant of the conv's type")
        else:
            info.weight_source = "computed"
            info.skip_reason = "weight is not constant (computed at run time)"
        return None
    source = identity_source(w)
    info.weight_source = "initializer" if source.is_initializer() else "Constant node"
    if source is not w:  # an exporter's deduplicated tensor: rewriting gives this conv its own factors
        info.weight_source += " through Identity"
    info.weight_dtype = tensor.dtype.name.lower()
    if tensor.dtype == ir.DataType.BFLOAT16:
        info.skip_reason = "bfloat16 weight: not supported yet (convert the model to float32 or float16)"
        return None
    if not tensor.dtype.is_floating_point():
        info.skip_reason = f"integer weight dtype {info.weight_dtype} (quantized models are not rewritten)"
        return None
    array = tensor.numpy()
    if not np.all(np.isfinite(array)):
        info.skip_reason = "weight holds NaN or Inf values"
        return None
    return array


FORMS = ("input", "output", "spatial", "tucker2", "pointwise")  # the factorization forms onebyone has (see forms_for)
DEFAULT_FORMS = ("input",)
OUTPUT_SIDE = ("output", "tucker2")  # the forms that reduce output channels (fitted with the conv's output moments)
SUBGRAPH = "inside a control-flow subgraph (If/Loop/Scan); only the main graph is rewritten"
TUCKER2_MIN_CHANNELS = 8  # per group, on each side (an RGB stem's 3 inputs: the output form does that conv's work)


def check_forms(forms) -> tuple[str, ...]:
    """`forms` as a tuple of known forms; ValueError naming the first unknown one, or when there is none."""
    forms = tuple(forms)
    unknown = [f for f in forms if f not in FORMS]
    if unknown or not forms:
        raise ValueError(f"unknown form {unknown[0]!r} (forms: {', '.join(FORMS)})" if unknown
                         else f"give at least one of {', '.join(FORMS)}")
    return forms


def form_of(kernel: tuple[int, ...]) -> str:
    """The default form of a conv's rewrite: "input" (1x1 bottleneck in front of a kxk conv, k > 1) or "pointwise" (a
    1x1 conv C->N as 1x1 C->r then 1x1 r->N: the same factorization along the input channels, with a 1x1 kernel)."""
    return "pointwise" if all(k == 1 for k in kernel) else "input"


def forms_for(kernel: tuple[int, ...], forms) -> list[str]:
    """The enabled forms a conv with this kernel can take: a kxk conv the input form (1x1 then kxk), the output
    form (kxk then 1x1) and the Tucker-2 form (1x1, kxk, 1x1), a 2D or 3D kernel wider than 1 along its first axis
    and along the others also the spatial form (kh x 1 then 1 x kw; in 3D kd x 1 x 1 then 1 x kh x kw); a 1x1 conv the
    pointwise form (for a 1x1 kernel both sides are the same factorization)."""
    if all(k == 1 for k in kernel):
        return ["pointwise"] if "pointwise" in forms else []
    spatial = ["spatial"] if len(kernel) in (2, 3) and kernel[0] > 1 and math.prod(kernel[1:]) > 1 else []
    return [f for f in ["input", "output"] + spatial + ["tucker2"] if f in forms]


def analyze(model: ir.Model, input_shapes: dict[str, tuple[int, ...]], measure_shapes=None,
            forms: tuple[str, ...] = DEFAULT_FORMS, with_data: bool = True) -> list[ConvInfo]:
    """A ConvInfo for every Conv of the model, in graph order. The model is unchanged (besides naming
    unnamed convs). `input_shapes` must give a static shape for every model input; `measure_shapes` measures the
    shapes inference leaves unknown (see shapes.static_shapes); convs whose forms (forms_for) are not in `forms` are
    skipped with a reason. Without data (`with_data` False: weight-only factors) the output form is offered only
    where it is lossless: its weight-only factors cannot keep the mean of the outputs they discard (on open_nsfw's
    RGB stem, predicted 0.16 at half the MACs, the model's output moved by 0.8). Gemm/MatMul layers with a constant
    weight are layers of the pointwise form: analyzed (and counted in the report) only when it is in `forms`."""
    nodes = conv_nodes(model, matrices="pointwise" in forms)
    wanted = {n.inputs[0].name for n in nodes if n.inputs and n.inputs[0] is not None}
    wanted |= {n.outputs[0].name for n in nodes}
    shapes = static_shapes(model, input_shapes, wanted, measure_shapes) if nodes else {}
    batch = batch_size(model, input_shapes)
    return [_analyze_one(n, model, shapes, forms, with_data, batch) for n in nodes]


def batch_size(model: ir.Model, input_shapes: dict[str, tuple[int, ...]]) -> int:
    """The batch size the model is analyzed at: the leading dim of its first input of rank 2 or more (1 when none
    has a static one). MACs are counted per batch item of it."""
    for value in model.graph.inputs:
        shape = input_shapes.get(value.name)
        if shape is not None and len(shape) >= 2 and isinstance(shape[0], int) and shape[0] > 0:
            return int(shape[0])
    return 1


def _analyze_one(node: ir.Node, model: ir.Model, shapes: dict[str, tuple[int, ...]], forms,
                 with_data: bool = True, batch: int = 1) -> ConvInfo:
    info = ConvInfo(name=node.name, node=node)
    weight = _weight_tensor(node, info)
    info.input_shape = shapes.get(node.inputs[0].name) if node.inputs[0] is not None else None
    info.output_shape = shapes.get(node.outputs[0].name)
    if node.op_type in matrix.MATRIX_OPS:
        weight = _matrix_geometry(info, node, weight, model, batch)
    else:
        _conv_geometry(info, node, weight)
        _check_valid(info, node)
    if info.skip_reason is not None:
        return info
    if node.graph is not model.graph:
        info.skip_reason = SUBGRAPH
        return info
    applicable = _applicable(info, forms)
    if info.skip_reason is not None:
        return info
    if any(p < 0 for p in info.pads):
        info.skip_reason = f"negative pads {list(info.pads)} (cropping) are not supported"
        return info
    if info.input_shape is None or info.output_shape is None:
        info.skip_reason = "input/output spatial size unknown; fix dynamic dims with --input-shape"
        return info
    info.weight = weight
    info.svals = factorize.singular_values(weight, info.groups)
    if "output" in applicable or "tucker2" in applicable:
        info.svals_output = factorize.singular_values_output(weight, info.groups)
    if "spatial" in applicable:
        info.svals_spatial = factorize.singular_values_spatial(weight, info.groups)
    _settle_forms(info, applicable, with_data)
    return info


def _conv_geometry(info: ConvInfo, node: ir.Node, weight: np.ndarray | None) -> None:
    """The conv's channels, groups, kernel and attributes (from its weight, or its shapes when the weight is not
    constant)."""
    info.has_bias = len(node.inputs) > 2 and node.inputs[2] is not None
    info.groups = node.attributes.get_int("group", 1)
    wshape = weight.shape if weight is not None else _static_dims(node.inputs[1] if len(node.inputs) > 1 else None)
    if wshape is not None:
        info.out_channels = int(wshape[0])
        info.in_channels = int(wshape[1]) * info.groups
        info.kernel = tuple(int(k) for k in wshape[2:])
    else:
        info.kernel = _ints(node, "kernel_shape", [])
        info.in_channels = info.input_shape[1] if info.input_shape else 0
        info.out_channels = info.output_shape[1] if info.output_shape else 0
    nd = len(info.kernel)
    info.strides = _ints(node, "strides", [1] * nd)
    info.dilations = _ints(node, "dilations", [1] * nd)
    info.pads = _ints(node, "pads", [0] * 2 * nd)
    info.auto_pad = node.attributes.get_string("auto_pad", "NOTSET")


def _matrix_geometry(info: ConvInfo, node: ir.Node, weight: np.ndarray | None, model: ir.Model,
                     batch: int = 1) -> np.ndarray | None:
    """A Gemm/MatMul as the pointwise conv it is (passes.matrix) in a model run at `batch`: its fields in conv layout;
    returns the weight in conv layout (None where it is not a pointwise layer, with skip_reason set)."""
    if node.graph is not model.graph:  # its shapes are not known there: say why it is skipped
        info.skip_reason = info.skip_reason or SUBGRAPH
        info.input_shape = info.output_shape = None
        return None
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
    info.matrix, fields, reason = matrix.describe(node, weight, info.input_shape, opset, batch)
    canonical = fields.pop("weight", None)
    if "input_shape" not in fields:  # the graph's shapes are not a conv's: none to report
        info.input_shape = info.output_shape = None
    for key, value in fields.items():
        setattr(info, key, value)
    if info.skip_reason is None and reason:
        info.skip_reason = reason
    return canonical


def _settle_forms(info: ConvInfo, applicable: list[str], with_data: bool) -> None:
    """info.forms: the applicable forms that lower MACs (the output form without data only where lossless), with a
    note on the others; skip_reason when none is left."""
    info.forms = tuple(f for f in applicable if cost.max_profitable_rank(info.break_even(f)) >= 1)
    lost = [f for f in applicable if f not in info.forms]
    notes = ["no rank of the " + ", ".join(f"{f} form (break-even {info.break_even(f):.2f})" for f in lost)
             + " lowers MACs"] if lost else []
    needy = [f for f in OUTPUT_SIDE if f in info.forms and not with_data and not _lossless_on_weights(info, f)]
    if needy:
        info.forms = tuple(f for f in info.forms if f not in needy)
        notes.append(f"the {' and '.join(needy)} form{'s' if len(needy) > 1 else ''} need{'' if len(needy) > 1 else 's'}"
                     " calibration data unless lossless")
    if info.forms and notes:
        info.form_note = "; ".join(([info.form_note] if info.form_note else []) + notes)
    if not info.forms and len(notes) > len(lost):  # the output-side forms paid, but only with data
        info.skip_reason = ("only the " + " and ".join(f"{f} form (break-even {info.break_even(f):.2f})" for f in needy)
                            + " lower MACs, and without calibration data they are used only where lossless "
                            "(give --calibration)")
    elif not info.forms:
        info.skip_reason = "no rank is below break-even " + (
            f"({info.break_even(applicable[0]):.2f}): a bottleneck cannot lower MACs" if len(applicable) == 1 else
            "(" + ", ".join(f"{f} form {info.break_even(f):.2f}" for f in applicable) + "): no form lowers MACs")


def numerical_ranks(info: ConvInfo, input_side: list[np.ndarray], output_side: list[np.ndarray]) -> tuple[int, int]:
    """The numerical ranks (at the weight dtype's precision) of the input-side and output-side spectra."""
    dtype = info.weight.dtype
    return (max(factorize.numerical_rank(s, info.matrix_shape, dtype) for s in input_side),
            max(factorize.numerical_rank(s, info.matrix_shape_of("output"), dtype) for s in output_side))


def tucker2_knob(info: ConvInfo, ranks: tuple[int, int]) -> int:
    """The smallest Tucker-2 rank knob whose ranks reach `ranks` on both sides."""
    top = info.matrix_shape_of("tucker2")[0]
    return next((r for r in range(1, top + 1) if all(a >= b for a, b in zip(info.tucker2_ranks(r), ranks))), top)


def _lossless_on_weights(info: ConvInfo, form: str) -> bool:
    """Whether `form` (output or Tucker-2) is lossless for the weight below its break-even."""
    rank_in, rank_out = numerical_ranks(info, info.svals, info.svals_output)
    rank = rank_out if form == "output" else tucker2_knob(info, (rank_in, rank_out))
    return rank < info.break_even(form)


def _applicable(info: ConvInfo, forms) -> list[str]:
    """The enabled forms that can narrow this conv (channels to reduce on their side); sets skip_reason when none."""
    applicable = forms_for(info.kernel, forms)
    if not applicable:
        info.skip_reason = (
            f"{info.op_type if info.matrix else '1x1 kernel'}: the pointwise form is off (--forms input,pointwise "
            "turns it on)" if form_of(info.kernel) == "pointwise" else "spatial kernel: its forms are off (see --forms)")
        return applicable
    if info.in_channels // info.groups == 1:
        applicable = [f for f in applicable if f in ("output", "spatial")]
    if info.out_channels // info.groups == 1:
        applicable = [f for f in applicable if f not in OUTPUT_SIDE]
    if "tucker2" in applicable and min(info.in_channels, info.out_channels) // info.groups < TUCKER2_MIN_CHANNELS:
        applicable.remove("tucker2")
        note = (f"the tucker2 form needs {TUCKER2_MIN_CHANNELS} channels per group on both sides (reducing a narrow "
                "side saves little; the one-sided forms reduce the other)")
        info.form_note = note if applicable else None
        if not applicable:
            info.skip_reason = note
            return applicable
    if not applicable:
        info.skip_reason = ("depthwise (one input channel per group): no input channels to reduce" if info.groups > 1
                            else "single input channel: no input channels to reduce")
    return applicable


def _check_valid(info: ConvInfo, node: ir.Node) -> None:
    """Raise OneByOneError, naming the conv, when its attributes contradict its weight or input (an invalid model:
    no runtime can run it, so no rewrite of it can be verified)."""
    from onebyone.errors import OneByOneError

    problems = []
    if info.groups < 1 or (info.out_channels and info.out_channels % info.groups):
        problems.append(f"group {info.groups} does not divide the {info.out_channels} output channels")
    nd = len(info.kernel)
    for key, values, want in () if not nd else (("strides", info.strides, nd), ("dilations", info.dilations, nd), ("pads", info.pads, 2 * nd)):
        if len(values) != want:
            problems.append(f"{key} has {len(values)} values, a {nd}-D kernel needs {want}")
    declared = _ints(node, "kernel_shape", [])
    if declared and info.kernel and tuple(declared) != tuple(info.kernel):
        problems.append(f"kernel_shape {list(declared)} differs from the weight's {list(info.kernel)}")
    if info.input_shape is not None and len(info.input_shape) >= 2 and info.in_channels and info.input_shape[1] != info.in_channels:
        problems.append(f"its input has {info.input_shape[1]} channels, the weight expects {info.in_channels} "
                        f"({info.in_channels // max(info.groups, 1)} per group x {info.groups} groups)")
    if info.input_shape is not None and info.kernel and info.auto_pad == "NOTSET" and not problems:
        for d in range(nd):
            size = info.input_shape[2 + d] + info.pads[d] + info.pads[d + nd] if len(info.input_shape) == 2 + nd else None
            if size is not None and (info.kernel[d] - 1) * info.dilations[d] + 1 > size:
                problems.append(f"its {info.kernel[d]}-tap kernel (dilation {info.dilations[d]}) is larger than the "
                                f"padded input ({size}) along spatial axis {d}")
                break
    if problems:
        raise OneByOneError(f"Conv {info.name!r} is invalid: {'; '.join(problems)}")
