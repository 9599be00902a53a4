"""What reads a conv's output: the metric in which an output-side factorization's error should be measured.

An output-side form (output, Tucker-2) discards output directions. Which ones matter is decided by the conv that
reads them, not by their variance: when the conv's only consumer is a Conv with a constant weight (through at most
one ReLU-like activation, treated as the identity), an output error e reaches that consumer as W_next e, so the
error that counts is eᵀ G e with G = M Mᵀ (M the consumer's weight unfolded along its input channels). Elsewhere
(residual adds, several readers, a model output) the metric is the plain Euclidean one.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onebyone.passes.graph_edits import constant_tensor

PASS_THROUGH = {"Relu", "LeakyRelu", "Clip", "HardSwish", "Sigmoid", "Elu"}
FLOOR = 1e-3  # relative to the mean eigenvalue: directions the consumer ignores still count a little


def metric(node: ir.Node) -> np.ndarray | None:
    """G [N, N] (scaled to trace N, plus FLOOR·I) of the conv `node`'s single Conv consumer, or None."""
    value = node.outputs[0]
    user = _only_user(value)
    if user is not None and user.op_type in PASS_THROUGH:
        user = _only_user(user.outputs[0])
    if user is None or user.op_type != "Conv" or user.attributes.get_int("group", 1) != 1 or len(user.inputs) < 2:
        return None
    tensor = constant_tensor(user.inputs[1]) if user.inputs[1] is not None else None
    if tensor is None:
        return None
    w = tensor.numpy().astype(np.float64)
    m = w.swapaxes(0, 1).reshape(w.shape[1], -1)
    if m.shape[0] != (value.shape[1] if value.shape is not None and isinstance(value.shape[1], int) else m.shape[0]):
        return None
    g = m @ m.T
    scale = np.trace(g) / len(g)
    if not np.isfinite(scale) or scale <= 0:
        return None
    return g / scale + FLOOR * np.eye(len(g))


def _only_user(value: ir.Value) -> ir.Node | None:
    if value.is_graph_output():
        return None
    users = {id(u): u for u, _ in value.uses()}
    return next(iter(users.values())) if len(users) == 1 else None


def root(g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(G^½, G^-½) of a symmetric positive definite metric."""
    vals, vecs = np.linalg.eigh((g + g.T) / 2)
    vals = np.maximum(vals, 1e-12)
    return (vecs * np.sqrt(vals)) @ vecs.T, (vecs / np.sqrt(vals)) @ vecs.T


def principal_basis(cov: np.ndarray, rank: int, g: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The best rank-`rank` projection of outputs with covariance `cov` for the error eᵀ G e (G = I when None), as
    (expand [N, k], project [k, N]) with expand @ project the projection: U principal for G^½ y, expand = G^-½ U,
    project = Uᵀ G^½ (k = min(rank, N); orthonormal U and its transpose when G is None)."""
    n = len(cov)
    half, inv = root(g) if g is not None else (np.eye(n), np.eye(n))
    weighted = half @ cov @ half
    vals, vecs = np.linalg.eigh((weighted + weighted.T) / 2)
    u = vecs[:, np.argsort(vals)[::-1][:min(rank, n)]]
    return inv @ u, u.T @ half
