"""Gemm and MatMul with a constant weight, seen as pointwise convs: the same factorization (a rank-r product through
the input channels), analysis, fitting and budget as a 1x1 conv, with the graph keeping its matrix ops.

The rest of onebyone reads a matrix op in conv layout: its weight as W[N, K, 1...], its input and output as
[batch, channels, positions...] (`MatrixOp.input_first` / `output_first` move a graph array there), its bias as a
vector [N]. passes.matrix_rewrite writes the rewrite with matrix ops again: `A @ B` becomes `(A @ U) @ V` (Gemm: two
Gemms, the second keeping the bias).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from onebyone.passes.graph_edits import constant_tensor

MATRIX_OPS = ("Gemm", "MatMul")


@dataclasses.dataclass
class MatrixOp:
    """How a Gemm or MatMul maps to a pointwise conv. `raw_input` is the data input's shape in the graph; `bias` the
    canonical bias [N] (Gemm: beta·C; MatMul: zeros, its bias lives in `bias_add`); `bias_add` (MatMul) the Add node
    that alone reads the MatMul's output and adds a constant of N values along the last axis, and the index of that
    constant among the Add's inputs: where a fitted bias correction goes (None: the rewrite has no bias to correct)."""

    op_type: str
    raw_input: tuple[int, ...]
    trans_a: bool = False
    trans_b: bool = False
    alpha: float = 1.0
    beta: float = 1.0
    bias: np.ndarray | None = dataclasses.field(default=None, repr=False)
    bias_add: tuple[ir.Node, int] | None = dataclasses.field(default=None, repr=False)
    positions: int = 1  # rows of the op per batch item: what its MACs per batch item count (see rows_per_item)

    @property
    def has_bias_slot(self) -> bool:
        """Whether a bias correction can be written (Gemm: always, through C; MatMul: when an Add follows)."""
        return self.op_type == "Gemm" or self.bias_add is not None

    def input_first(self, array: np.ndarray) -> np.ndarray:
        """The op's data input as a pointwise conv sees it: [batch, K, positions...]."""
        return _channels_first(array.T if self.trans_a else array)

    def output_first(self, array: np.ndarray) -> np.ndarray:
        """The op's output as a pointwise conv produces it: [batch, N, positions...]."""
        return _channels_first(array)


def _channels_first(array: np.ndarray) -> np.ndarray:
    return array[:, :, None] if array.ndim == 2 else np.moveaxis(array, -1, 1)


def canonical_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The conv-layout shape of a matrix op's input or output of graph shape `shape` (rank >= 2)."""
    return (shape[0], shape[1], 1) if len(shape) == 2 else (shape[0], shape[-1], *shape[1:-1])


def rows_per_item(shape_in: tuple[int, ...], batch: int) -> int:
    """The rows a matrix op with (transA-resolved) input shape `shape_in` [..., K] computes per batch item of a model
    run at batch size `batch`: all its rows (the product of the leading dims) divided by the batch — all of them when
    they are not a multiple of it. Exporters lay rows out every way: a ViT's tokens flattened to [197, 768] or kept
    sequence-first [197, 1, 768], a Swin's windows [64, 49, 96], a detector's regions [100, 1024], a static batch
    [8, 2048] (one row per item) or [B, T, K] (T per item); all of them run for every item."""
    rows = int(np.prod(shape_in[:-1], dtype=np.int64))
    return rows // batch if batch > 0 and rows % batch == 0 else rows


def describe(node: ir.Node, weight: np.ndarray | None, x_shape, opset: int,
             batch: int = 1) -> tuple[MatrixOp | None, dict, str | None]:
    """(MatrixOp, the ConvInfo fields of the pointwise conv it is, skip reason or None) for a Gemm or MatMul whose
    constant weight is `weight` (None: not constant) and whose data input has static shape `x_shape` (None: unknown),
    in a model run at batch size `batch` (see rows_per_item). A contradiction between the weight and the input raises
    OneByOneError (no runtime can run such a model)."""
    gemm = node.op_type == "Gemm"
    trans_a, trans_b = (bool(node.attributes.get_int(k, 0)) if gemm else False for k in ("transA", "transB"))
    if weight is None:
        return None, {}, None
    if weight.ndim != 2:
        return None, {}, f"MatMul weight of rank {weight.ndim} (batched matrices): only a 2-D weight is a pointwise layer"
    w = weight.T if not trans_b else weight  # [N, K]
    fields = {"out_channels": int(w.shape[0]), "in_channels": int(w.shape[1]), "groups": 1}
    if x_shape is None:
        return None, fields, "input shape unknown; fix dynamic dims with --input-shape"
    if len(x_shape) < 2:
        return None, fields, "1-D input (a vector-matrix product): no batch or position axis to keep"
    k = x_shape[0] if trans_a else x_shape[-1]
    if k != w.shape[1]:
        from onebyone.errors import OneByOneError

        raise OneByOneError(f"{node.op_type} {node.name!r} is invalid: its input has {k} features, the weight "
                            f"expects {w.shape[1]}")
    if gemm and opset < 11:
        return None, fields, "Gemm before opset 11 needs a C input on the inserted Gemm (convert the model to opset 11+)"
    op, reason = op_of(node, w.shape[0])
    if reason:
        return None, fields, reason
    op.raw_input = tuple(x_shape)
    shape_in = x_shape[::-1] if trans_a else x_shape
    own = node.inputs[0].is_graph_input()  # a model input's first (transA-resolved) dim is the batch
    op.positions = rows_per_item(tuple(shape_in), shape_in[0] if own else batch)
    out_shape = (*shape_in[:-1], w.shape[0])
    nd = len(canonical_shape(shape_in)) - 2
    fields.update(kernel=(1,) * nd, strides=(1,) * nd, dilations=(1,) * nd, pads=(0,) * (2 * nd),
                  input_shape=canonical_shape(shape_in), output_shape=canonical_shape(out_shape),
                  has_bias=gemm and len(node.inputs) > 2 and node.inputs[2] is not None or op.bias_add is not None,
                  weight=(op.alpha * w).astype(weight.dtype).reshape(w.shape[0], w.shape[1], *([1] * nd)))
    return op, fields, None


def op_of(node: ir.Node, n: int) -> tuple[MatrixOp | None, str | None]:
    """The MatrixOp of a Gemm or MatMul with n outputs, read from the node and its graph (raw_input left empty), or a
    reason its bias is not one vector."""
    if node.op_type != "Gemm":
        return MatrixOp("MatMul", (), bias=np.zeros(n), bias_add=_bias_add(node, n)), None
    a = node.attributes
    beta = a.get_float("beta", 1.0)
    bias, reason = _gemm_bias(node, n, beta)
    if reason:
        return None, reason
    return MatrixOp("Gemm", (), bool(a.get_int("transA", 0)), bool(a.get_int("transB", 0)), a.get_float("alpha", 1.0),
                    beta, bias), None


def _gemm_bias(node: ir.Node, n: int, beta: float) -> tuple[np.ndarray | None, str | None]:
    """Gemm's beta·C as a vector [N] (zeros without C), or a reason it is not one."""
    c = node.inputs[2] if len(node.inputs) > 2 else None
    if c is None:
        return np.zeros(n), None
    tensor = constant_tensor(c)
    if tensor is None:
        return None, "Gemm's C is not a constant (a bias computed at run time)"
    array = tensor.numpy().astype(np.float64)
    if array.size == 1:
        return np.full(n, beta * float(array.ravel()[0])), None
    if array.size == n and (array.ndim == 1 or array.shape[0] == 1):
        return beta * array.ravel(), None
    return None, f"Gemm's C of shape {list(array.shape)} varies along the batch (not one bias per output)"


def _bias_add(node: ir.Node, n: int) -> tuple[ir.Node, int] | None:
    """The Add that alone reads the MatMul's output and adds a constant of n values along the last axis."""
    uses = list(node.outputs[0].uses())
    if len(uses) != 1 or node.outputs[0].is_graph_output():
        return None
    add = uses[0].node
    if add.op_type != "Add" or add.domain not in ("", "ai.onnx") or len(add.inputs) != 2:
        return None
    other = 1 - uses[0].idx
    tensor = constant_tensor(add.inputs[other]) if add.inputs[other] is not None else None
    if tensor is None or tensor.size != n or (tensor.shape and tensor.shape[-1] != n):
        return None
    if not tensor.dtype.is_floating_point():
        return None
    return add, other
