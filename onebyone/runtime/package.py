"""Compiling an ONNX model with TVM into a package folder (shared library + manifest), and loading it back.

A package is a folder holding `model.so` (the Relax VM executable with the weights embedded) and `manifest.json`:
target, device, input/output names, shapes and dtypes, the onebyone and TVM versions and the source model's hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from onebyone.atomic import atomic_folder
from onebyone.errors import OneByOneError
from onebyone.passes.input_shapes import resolve_input_shapes
from onebyone.runtime import targets, tuning
from onebyone.runtime.prepare import prepare

FORMAT = 1
LIBRARY = "model.so"
MANIFEST = "manifest.json"


def _io(values) -> list[dict[str, Any]]:
    out = []
    for vi in values:
        t = vi.type.tensor_type
        out.append({
            "name": vi.name,
            "shape": [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim],
            "dtype": str(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)),
        })
    return out


def compile_model(
    model: ir.Model, target: dict[str, Any], output: str | os.PathLike, input_shapes: dict[str, tuple[int, ...]] | None = None,
    source_path: str | None = None, cross_compiler: str | None = None, tune_trials: int = 0,
    tuning_db: str | os.PathLike | None = None, progress=None, remote=None, cost_model: str = "auto",
) -> Path:
    """Compile `model` for `target` into the package folder `output` (written atomically: built in a temp folder
    next to it, then renamed). Returns the folder. With `tune_trials`, tuning candidates are timed on this machine or,
    with `remote` (an onebyone.runtime.remote.Remote; required for another CPU), on that device. Raises
    OneByOneError for unsupported ops, a missing cross compiler or device, or a failed build."""
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    import onebyone

    cc = None
    if targets.is_cross(target):
        cc = cross_compiler or "aarch64-linux-gnu-g++"
        if shutil.which(cc) is None:
            raise OneByOneError(f"cross compiler {cc!r} not found; install it (Debian: apt-get install g++-aarch64-linux-gnu)")
    if tune_trials > 0:
        tuning.resolve_cost_model(cost_model)  # a bad choice is said before any work
        if cc and remote is None:
            raise OneByOneError("tuning for another CPU times the candidates on the device: give --rpc HOST:PORT "
                                "(a board running tvm.exec.rpc_server, or `onebyone emulate aarch64`)")
        if target.get("kind") == "cuda" and remote is None:
            load_cuda_runtime()  # one-line error naming the missing driver or CUDA runtime library
            if not tvm.cuda(0).exist:
                raise OneByOneError("tuning for cuda times the candidates on a GPU, and this machine has none")
        if target.get("kind") == "llvm" and "num-cores" not in target:  # MetaSchedule plans parallel loops by it
            target = dict(target, **{"num-cores": remote.num_threads() if remote else (os.cpu_count() or 1)})
    shapes = resolve_input_shapes(model, input_shapes)
    proto = prepare(model, shapes)
    try:
        mod = from_onnx(proto, shape_dict={k: list(v) for k, v in shapes.items()}, keep_params_in_input=False)
    except Exception as exc:  # noqa: BLE001 - the frontend raises many types
        raise OneByOneError(f"TVM cannot import the model: {_first_line(exc)}") from None
    tuned = None
    try:
        if tune_trials > 0 or tuning.has_records(tuning_db):
            db = tuning_db or tempfile.mkdtemp(prefix="onebyone-tuning-")
            executable, tuned = tuning.compile_tuned(mod, tvm.target.Target(target), tune_trials, db, progress,
                                                     remote=remote, cross_compiler=cc, cost_model=cost_model)
        else:
            executable = tvm.compile(mod, target=tvm.target.Target(target))
    except OneByOneError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise OneByOneError(f"TVM failed to compile for {json.dumps(target)}: {_first_line(exc)}") from None
    out = Path(output).resolve()
    if not out.parent.is_dir():
        raise OneByOneError(f"{out.parent}: output folder does not exist")
    with atomic_folder(out) as tmp:
        kwargs = {}
        if cc:
            from tvm.support import cc as tvm_cc

            kwargs["fcompile"] = tvm_cc.cross_compiler(cc)
        executable.export_library(str(tmp / LIBRARY), **kwargs)
        device_code = _check_device_code(executable, target, tmp) if target.get("kind") == "cuda" else None
        digest = hashlib.sha256(Path(source_path).read_bytes()).hexdigest() if source_path else hashlib.sha256(
            ir.serde.serialize_model(model).SerializeToString()).hexdigest()
        manifest = {
            "format": FORMAT,
            "library": LIBRARY,
            "target": target,
            "device": targets.device_kind(target),
            "inputs": _io([vi for vi in proto.graph.input if vi.name in shapes]),
            "outputs": _io(_inferred_outputs(proto)),
            "weights": "embedded",
            "tuning": tuned,
            "device_code": device_code,
            "onebyone_version": onebyone.__version__,
            "tvm_version": tvm.__version__,
            "source_model_sha256": digest,
            "source_model": os.path.basename(source_path) if source_path else model.graph.name,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


@dataclasses.dataclass
class Package:
    """A loaded package: its manifest and (when loaded locally) the Relax VM."""

    path: Path
    manifest: dict[str, Any]
    vm: Any = None
    device: Any = None

    @property
    def input_names(self) -> list[str]:
        return [i["name"] for i in self.manifest["inputs"]]

    @property
    def output_names(self) -> list[str]:
        return [o["name"] for o in self.manifest["outputs"]]

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by name for one feed (arrays must match the manifest's shapes; they are cast to its dtypes)."""
        for spec in self.manifest["inputs"]:
            if spec["name"] not in feed:
                raise OneByOneError(f"package input {spec['name']!r} missing from the inputs")
            if list(np.shape(feed[spec["name"]])) != spec["shape"]:
                raise OneByOneError(f"input {spec['name']!r} has shape {list(np.shape(feed[spec['name']]))}, the package needs {spec['shape']}")
        result = self.vm["main"](*device_args(self.manifest, feed, self.device))
        return {n: o.numpy() for n, o in zip(self.output_names, as_outputs(result))}

    def time(self, feed: dict[str, np.ndarray], number: int = 10, repeat: int = 5) -> dict[str, float]:
        """time_evaluator statistics in milliseconds (median, mean, min, max over `repeat` runs of `number`)."""
        args = device_args(self.manifest, feed, self.device)
        self.vm.set_input("main", *args)
        timer = self.vm.time_evaluator("invoke_stateful", self.device, number=number, repeat=repeat)
        res = timer("main")
        results = np.asarray(res.results) * 1e3
        return {"median_ms": float(np.median(results)), "mean_ms": float(results.mean()), "min_ms": float(results.min()),
                "max_ms": float(results.max())}


def device_args(manifest: dict[str, Any], feed: dict[str, np.ndarray], device) -> list:
    """The feed's arrays, in the manifest's input order and dtypes, as tensors on `device` (local or remote)."""
    import tvm

    return [tvm.runtime.tensor(np.ascontiguousarray(feed[i["name"]], dtype=i["dtype"]), device) for i in manifest["inputs"]]


def as_outputs(result) -> list:
    """A Relax VM result as a list of output tensors (a single output comes back bare)."""
    return list(result) if isinstance(result, (list, tuple)) or type(result).__name__ == "Array" else [result]


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the package folder at `path`; OneByOneError when it is missing or corrupt."""
    p = Path(path)
    if not p.is_dir():
        raise OneByOneError(f"{p}: not a package folder")
    try:
        manifest = json.loads((p / MANIFEST).read_text())
    except FileNotFoundError:
        raise OneByOneError(f"{p}: no {MANIFEST}; not a onebyone package") from None
    except json.JSONDecodeError as exc:
        raise OneByOneError(f"{p / MANIFEST}: corrupt manifest ({exc.msg})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or "inputs" not in manifest:
        raise OneByOneError(f"{p / MANIFEST}: not a onebyone package manifest (format {FORMAT})")
    if not (p / manifest.get("library", LIBRARY)).is_file():
        raise OneByOneError(f"{p}: the library {manifest.get('library', LIBRARY)} is missing")
    return manifest


def load_package(path: str | os.PathLike) -> Package:
    """Load a package for local execution (CPU, or CUDA where a GPU is present)."""
    import tvm
    from tvm import relax

    p = Path(path)
    manifest = read_manifest(p)
    if targets.is_cross(manifest["target"]):
        raise OneByOneError(f"{p}: built for {manifest['target'].get('mtriple')}; run it on that device (--rpc)")
    if manifest["device"] == "cuda":
        load_cuda_runtime(p)
    device = tvm.cuda(0) if manifest["device"] == "cuda" else tvm.cpu(0)
    if manifest["device"] == "cuda" and not device.exist:
        raise OneByOneError(f"{p}: a CUDA package needs a GPU, and this machine has none")
    try:
        lib = tvm.runtime.load_module(str(p / manifest["library"]))
    except Exception as exc:  # noqa: BLE001
        raise OneByOneError(f"{p}: cannot load the library ({_first_line(exc)})") from None
    return Package(p, manifest, relax.VirtualMachine(lib, device), device)


def load_cuda_runtime(p: Path | None = None) -> None:
    """Make TVM's CUDA runtime (the wheel's libtvm_runtime_cuda.so sidecar) available, also in a runtime-only
    install (TVM_USE_RUNTIME_LIB=1), where TVM does not load it by itself. Raises OneByOneError naming the missing
    library (the NVIDIA driver's libcuda.so.1 or CUDA 13's libcudart.so.13) when it cannot be loaded."""
    import ctypes

    import tvm

    where = f"{p}: " if p is not None else ""
    if tvm.get_global_func("ffi.Module.load_from_bytes.cuda", allow_missing=True) is not None:
        return
    from tvm.base import _LOADED_LIBS

    runtime = _LOADED_LIBS.get("tvm_runtime")
    folder = Path(runtime._name).resolve().parent if runtime is not None else Path(tvm.__file__).parent / "lib"
    sidecar = folder / "libtvm_runtime_cuda.so"
    if not sidecar.is_file():
        raise OneByOneError(f"{where}this TVM has no CUDA runtime ({sidecar.name} not found next to libtvm_runtime.so)")
    try:
        ctypes.CDLL(str(sidecar), mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        raise OneByOneError(f"{where}TVM's CUDA runtime cannot be loaded ({_first_line(exc)}); a CUDA package needs an "
                            "NVIDIA driver (libcuda.so.1) and the CUDA 13 runtime (libcudart.so.13) on the library path") from None


def cuda_sources(executable) -> list[str]:
    """The CUDA C sources of every cuda module in a compiled executable's import tree."""
    out, stack = [], [executable.mod]
    while stack:
        m = stack.pop()
        if m.kind == "cuda":
            out.append(m.inspect_source("cuda"))
        stack.extend(m.imports)
    return out


def _check_device_code(executable, target: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Write the generated CUDA source and compile it to a cubin for the target's arch with nvcc (this proves
    the device code builds for that GPU without one). Raises OneByOneError when nvcc rejects it."""
    import subprocess

    arch = str(target.get("arch", "sm_90"))
    sources = cuda_sources(executable)
    if not sources:
        raise OneByOneError("the CUDA build holds no device code")
    src = folder / "device.cu"
    src.write_text("\n".join(sources))
    nvcc = find_nvcc()
    if nvcc is None:
        return {"source": src.name, "arch": arch, "cubin": None, "checked": False, "why": "nvcc not found"}
    cubin = folder / f"device.{arch}.cubin"
    proc = subprocess.run([nvcc, "-cubin", f"-arch={arch}", "-w", "-o", str(cubin), str(src)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise OneByOneError(f"nvcc cannot compile the generated device code for {arch}: {_first_line(proc.stderr)}")
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return {"source": src.name, "arch": arch, "cubin": cubin.name, "cubin_bytes": cubin.stat().st_size,
            "checked": True, "nvcc": version}


def find_nvcc() -> str | None:
    """nvcc on PATH, else the one of the PyPI wheel nvidia-cuda-nvcc (installed by the test extra), else None."""
    import importlib.util

    found = shutil.which("nvcc")
    if found:
        return found
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        for candidate in sorted(Path(root).glob("cu*/bin/nvcc"), reverse=True):
            if os.access(candidate, os.X_OK):
                return str(candidate)
    return None


def _inferred_outputs(proto: onnx.ModelProto):
    try:
        return onnx.shape_inference.infer_shapes(proto).graph.output
    except Exception:  # noqa: BLE001 - shapes are informative only
        return proto.graph.output


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text or type(exc).__name__)[:300]
