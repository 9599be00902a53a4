"""Static input shapes: resolving the dynamic dims of a model's inputs."""

from __future__ import annotations

import onnx_ir as ir

from onebyone.errors import OneByOneError


def graph_inputs(model: ir.Model) -> list[ir.Value]:
    """Real inputs of the main graph (initializers listed as inputs, old-IR style, excluded)."""
    return [v for v in model.graph.inputs if not v.is_initializer()]


def resolve_input_shapes(model: ir.Model, given: dict[str, tuple[int, ...]] | None = None) -> dict[str, tuple[int, ...]]:
    """A static shape for every model input.

    Given shapes win (their rank must match); otherwise a dynamic leading (batch) dim counts as 1. Any other
    dynamic dim without a given shape raises OneByOneError naming the input and how to fix it.
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
            raise OneByOneError(f"input {v.name!r} has no shape; give one in input_shapes (e.g. {{{v.name!r}: (1, 3, 224, 224)}})",
                                cli=f"input {v.name!r} has no shape; give one with --input-shape '{v.name}:1x3x224x224'")
        dims = list(v.shape)
        if v.name in given:
            fixed = given[v.name]
            if len(fixed) != len(dims):
                raise OneByOneError(f"input_shapes[{v.name!r}] has rank {len(fixed)}, the model's input has rank {len(dims)}",
                                    cli=f"--input-shape for {v.name!r} has rank {len(fixed)}, the model's input has rank {len(dims)}")
            for d, f in zip(dims, fixed):
                if isinstance(d, int) and d != f:
                    raise OneByOneError(f"input_shapes[{v.name!r}] = {fixed} conflicts with the model's static shape {_fmt(dims)}",
                                        cli=f"--input-shape for {v.name!r}: {fixed} conflicts with the model's static shape {_fmt(dims)}")
            shapes[v.name] = tuple(fixed)
            continue
        out = []
        for i, d in enumerate(dims):
            if isinstance(d, int):
                out.append(d)
            elif i == 0:
                out.append(1)
            else:
                example = [1] + [x if isinstance(x, int) else "N" for x in dims[1:]]
                raise OneByOneError(
                    f"input {v.name!r} has dynamic dims {_fmt(dims)}; fix them in input_shapes "
                    f"(e.g. {{{v.name!r}: ({', '.join(map(str, example))})}})",
                    cli=f"input {v.name!r} has dynamic dims {_fmt(dims)}; fix them with --input-shape '{v.name}:"
                    + "x".join(map(str, example)) + "'")
        shapes[v.name] = tuple(out)
    return shapes


def _fmt(dims) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) else str(d.value if hasattr(d, "value") else d) for d in dims) + "]"
