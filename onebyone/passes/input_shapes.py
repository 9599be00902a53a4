"""Static input shapes: parsing `--input-shape name:1x3x224x224` and resolving dynamic dims of a model."""

from __future__ import annotations

import onnx_ir as ir

from onebyone.errors import OneByOneError


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """'name:1x3x224x224' -> ('name', (1, 3, 224, 224)). The name may itself contain ':' (tf2onnx names)."""
    name, sep, dims = text.rpartition(":")
    if not sep or not name:
        raise OneByOneError(f"--input-shape {text!r}: expected NAME:DxDxD, e.g. x:1x3x224x224")
    try:
        shape = tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        raise OneByOneError(f"--input-shape {text!r}: dims must be integers separated by 'x'") from None
    if any(d <= 0 for d in shape):
        raise OneByOneError(f"--input-shape {text!r}: dims must be positive")
    return name, shape


def parse_input_shapes(texts: list[str] | tuple[str, ...] | None) -> dict[str, tuple[int, ...]]:
    """Parse repeated --input-shape options into a dict."""
    return dict(parse_input_shape(t) for t in (texts or ()))


def graph_inputs(model: ir.Model) -> list[ir.Value]:
    """Real inputs of the main graph (initializers listed as inputs, old-IR style, excluded)."""
    return [v for v in model.graph.inputs if not v.is_initializer()]


def resolve_input_shapes(model: ir.Model, given: dict[str, tuple[int, ...]] | None = None) -> dict[str, tuple[int, ...]]:
    """A static shape for every model input.

    Given shapes win (their rank must match); otherwise a dynamic leading (batch) dim counts as 1. Any other
    dynamic dim without a given shape raises OneByOneError naming the input and the option that fixes it.
    """
    given = dict(given or {})
    inputs = graph_inputs(model)
    names = {v.name for v in inputs}
    for name in given:
        if name not in names:
            raise OneByOneError(f"unknown input name {name!r}; the model's inputs are {sorted(names)}")
    shapes: dict[str, tuple[int, ...]] = {}
    for v in inputs:
        if v.shape is None:
            if v.name in given:
                shapes[v.name] = given[v.name]
                continue
            raise OneByOneError(f"input {v.name!r} has no shape; give one with --input-shape '{v.name}:1x3x224x224'")
        dims = list(v.shape)
        if v.name in given:
            fixed = given[v.name]
            if len(fixed) != len(dims):
                raise OneByOneError(f"--input-shape for {v.name!r} has rank {len(fixed)}, the model's input has rank {len(dims)}")
            for d, f in zip(dims, fixed):
                if isinstance(d, int) and d != f:
                    raise OneByOneError(f"--input-shape for {v.name!r}: {fixed} conflicts with the model's static shape {_fmt(dims)}")
            shapes[v.name] = tuple(fixed)
            continue
        out = []
        for i, d in enumerate(dims):
            if isinstance(d, int):
                out.append(d)
            elif i == 0:
                out.append(1)
            else:
                raise OneByOneError(
                    f"input {v.name!r} has dynamic dims {_fmt(dims)}; fix them with --input-shape '{v.name}:"
                    + "x".join(str(x) if isinstance(x, int) else "N" for x in [1] + dims[1:]) + "'"
                )
        shapes[v.name] = tuple(out)
    return shapes


def _fmt(dims) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) else str(d.value if hasattr(d, "value") else d) for d in dims) + "]"
