"""Loading and saving models with one-line errors; outputs are written atomically, inputs never touched."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from google.protobuf.message import DecodeError

from onebyone.atomic import atomic_file, atomic_pair
from onebyone.errors import OneByOneError

MIN_OPSET = 7  # Conv's semantics are unchanged from opset 1; 7 is the oldest opset onnxruntime runs.


def max_opset() -> int:
    """The newest default-domain opset that the installed onnx knows."""
    return onnx.defs.onnx_opset_version()


def load_model(path: str | os.PathLike) -> ir.Model:
    """Load an ONNX model as onnx-ir, or raise OneByOneError naming what is wrong with the file.

    External data stays external (memory-mapped), so large models are not read into memory.
    """
    p = Path(path)
    if not p.exists():
        raise OneByOneError(f"{p}: no such file")
    if not p.is_file():
        raise OneByOneError(f"{p}: not a file")
    if p.stat().st_size == 0:
        raise OneByOneError(f"{p}: empty file, not an ONNX model")
    try:
        proto = onnx.load(str(p), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, UnicodeDecodeError) as exc:
        raise OneByOneError(f"{p}: not a valid ONNX model (corrupt or truncated protobuf: {_short(exc)})") from None
    if proto.ir_version <= 0 or not proto.graph.node:
        raise OneByOneError(f"{p}: not an ONNX model (no IR version or no graph nodes)")
    check_opset(proto, str(p))
    check_external_data(proto, p)
    serde_log = logging.getLogger(ir.serde.__name__)
    level = serde_log.level
    serde_log.setLevel(logging.ERROR)  # its warning on an undefined input: the error below names it, in one line
    try:
        model = ir.serde.deserialize_model(proto)
        undefined = _undefined_input(model)
        if undefined:
            raise OneByOneError(f"{p}: corrupt ONNX model ({undefined})")
        _well_formed(model)
    except OneByOneError:
        raise
    except Exception as exc:  # noqa: BLE001 - any deserialization failure is a corrupt model
        raise OneByOneError(f"{p}: corrupt ONNX model ({_short(exc)})") from None
    finally:
        serde_log.setLevel(level)
    ir.external_data.set_base_dir(model.graph, str(p.parent))
    return model


def _undefined_input(model: ir.Model) -> str | None:
    """The first node input that no node produces and no graph declares (as an input or an initializer), described;
    None when there is none."""
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for v in node.inputs:
            if v is not None and v.producer() is None and not v.is_graph_input() and not v.is_initializer():
                return (f"input {v.name!r} of {node.op_type} node {node.name!r} is produced by no node and is not a "
                        "graph input or initializer")
    return None


def _well_formed(model: ir.Model) -> None:
    """Raise unless the graph is well-formed (a dangling input, a cycle); nodes out of topological order are
    sorted in place first — onnxruntime runs such graphs, and converters write them (onnxruntime's and
    onnxconverter-common's float16 conversion with keep_io_types appends the input Casts after their readers)."""
    try:
        model.clone()
    except Exception:  # noqa: BLE001 - retried once sorted; a second failure is the model's
        common_passes.TopologicalSortPass()(model)
        model.clone()


def check_external_data(proto: onnx.ModelProto, path: Path) -> None:
    """Raise OneByOneError unless every external tensor's file lies inside the model's folder, exists, and holds the
    bytes the tensor needs (a missing, truncated or escaping data file is named)."""
    folder = path.parent.resolve()
    for t in _all_tensors(proto.graph):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        location = info.get("location", "")
        target = (folder / location).resolve()
        if not location or Path(location).is_absolute() or not target.is_relative_to(folder):
            raise OneByOneError(f"{path}: tensor {t.name!r} points outside the model's folder ({location!r}); refusing to read it")
        if not target.is_file():
            raise OneByOneError(f"{path}: external data file {location!r} of tensor {t.name!r} is missing")
        try:
            offset = int(info.get("offset", 0))
            length = int(info["length"]) if "length" in info else _nbytes(t)
        except (ValueError, TypeError):
            raise OneByOneError(f"{path}: tensor {t.name!r} has malformed external-data offset/length") from None
        if length is not None and offset + length > target.stat().st_size:
            raise OneByOneError(f"{path}: external data file {location!r} is truncated (tensor {t.name!r} needs bytes "
                                f"{offset}..{offset + length}, the file has {target.stat().st_size})")


def _nbytes(t: onnx.TensorProto) -> int | None:
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        return None
    n = 1
    for d in t.dims:
        n *= d
    return n * itemsize


def _all_tensors(graph: onnx.GraphProto):
    """Initializers and Constant-node tensors of a graph and its subgraphs."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_tensors(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _all_tensors(g)


def check_opset(proto: onnx.ModelProto, where: str) -> None:
    """Raise OneByOneError unless the default-domain opset is one onebyone supports."""
    versions = {o.domain: o.version for o in proto.opset_import}
    version = versions.get("", versions.get("ai.onnx"))
    if version is None:
        raise OneByOneError(f"{where}: model imports no default-domain (ai.onnx) opset")
    if not MIN_OPSET <= version <= max_opset():
        raise OneByOneError(
            f"{where}: unsupported opset {version} (supported: {MIN_OPSET}..{max_opset()})"
        )


def has_external_data(model: ir.Model) -> bool:
    """True when any initializer of the main graph is stored in an external file."""
    return any(isinstance(v.const_value, ir.ExternalTensor) for v in model.graph.initializers.values())


def save_model(model: ir.Model, path: str | os.PathLike, *, inputs_to_protect: tuple[str, ...] = (),
               external: bool | None = None) -> Path:
    """Write `model` to `path` atomically (a temp file in the same folder, then a rename).

    With `external` (default: when the model still holds external tensors) its weights go to `<name>.data` beside
    the output, written atomically with it. Refuses to write over any path in `inputs_to_protect` (the input model
    and its data files).
    """
    out = Path(path).resolve()
    external = has_external_data(model) if external is None else external
    data_name = out.name + ".data"
    check_not_input(out, inputs_to_protect)
    check_writable(out, "output")
    try:
        if external:
            with atomic_pair(out, data_name) as folder:
                ir.save(model, folder / out.name, external_data=data_name)
        else:
            with atomic_file(out) as tmp:
                ir.save(model, tmp)
    except OSError as exc:
        raise OneByOneError(f"{out}: cannot write the model ({exc.strerror or exc})") from None
    return out


def check_writable(path: str | os.PathLike, what: str) -> None:
    """Raise OneByOneError unless a file can be created at `path`: not a folder, in an existing, writable folder."""
    p = Path(path)
    if p.is_dir():
        raise OneByOneError(f"{what} {p}: is a folder; give a file name")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise OneByOneError(f"{what} {p}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OneByOneError(f"{what} {p}: folder {parent} is not writable")


def check_not_input(path: str | os.PathLike, inputs: tuple[str, ...]) -> None:
    """Raise OneByOneError when `path` (or its external data file) is one of the input files."""
    out = Path(path).resolve()
    protected = {Path(p).resolve() for p in inputs}
    if out in protected or out.parent / (out.name + ".data") in protected:
        raise OneByOneError(f"{out}: refusing to overwrite the input model; choose another output path")


def external_data_files(path: str | os.PathLike) -> tuple[str, ...]:
    """The external data files that the model at `path` refers to (absolute paths)."""
    p = Path(path)
    try:
        proto = onnx.load(str(p), load_external_data=False)
    except Exception:  # noqa: BLE001 - an unreadable file has no data files to protect
        return ()
    names = set()
    for t in proto.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                names.add(str((p.parent / entry.value).resolve()))
    return tuple(sorted(names))


ORT_DOMAINS = ("com.microsoft", "com.microsoft.nchwc", "com.ms.internal.nhwc")


def unsupported_ops(model: ir.Model) -> list[str]:
    """'domain::Op' for every op that neither the ONNX standard nor onnxruntime's contrib domains define."""
    found = set()
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        domain = "" if node.domain == "ai.onnx" else node.domain
        if domain in ORT_DOMAINS:
            continue
        if domain in ("", "ai.onnx.ml"):
            if onnx.defs.has(node.op_type, domain):
                continue
        elif any(f.name == node.op_type and f.domain == node.domain for f in model.functions.values()):
            continue
        found.add(f"{domain or 'ai.onnx'}::{node.op_type}")
    return sorted(found)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
