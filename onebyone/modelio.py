"""Loading and saving models with one-line errors; outputs are written atomically, inputs never touched."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from onebyone.atomic import atomic_file
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
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as exc:  # noqa: BLE001 - any deserialization failure is a corrupt model
        raise OneByOneError(f"{p}: corrupt ONNX model ({_short(exc)})") from None
    ir.external_data.set_base_dir(model.graph, str(p.parent))
    return model


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


def save_model(model: ir.Model, path: str | os.PathLike, *, inputs_to_protect: tuple[str, ...] = ()) -> Path:
    """Write `model` to `path` atomically (a temp file in the same folder, then a rename).

    A model that had external data keeps it external, in `<name>.data` beside the output. Refuses to write
    over any path in `inputs_to_protect` (the input model and its data files).
    """
    out = Path(path).resolve()
    protected = {Path(p).resolve() for p in inputs_to_protect}
    external = has_external_data(model)
    data_name = out.name + ".data"
    if out in protected or (external and out.parent / data_name in protected):
        raise OneByOneError(f"{out}: refusing to overwrite the input model; choose another output path")
    if not out.parent.is_dir():
        raise OneByOneError(f"{out.parent}: output folder does not exist")
    with atomic_file(out) as tmp:
        if external:
            ir.save(model, tmp, external_data=data_name)
        else:
            ir.save(model, tmp)
    return out


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
