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
from onebyone.errors import OneByOneError, first_line
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
    cc = _cross_compiler(target, cross_compiler)
    if tune_trials > 0:
        target = _ready_to_tune(target, cc, remote, cost_model)
    shapes = resolve_input_shapes(model, input_shapes)
    proto = prepare(model, shapes)
    executable, tuned = _build(proto, shapes, target, tune_trials, tuning_db, progress, remote, cc, cost_model)
    out = Path(output).resolve()
    if not out.parent.is_dir():
        raise OneByOneError(f"{out.parent}: output folder does not exist")
    with atomic_folder(out) as tmp:
        kwargs = {}
        if cc:
            from tvm.support import cc as tvm_cc

            kwargs["fcompile"] = tvm_cc.cross_compiler(cc)
            # TVM asks this triple of a model without kernels; its own answer comes from the host compiler (x86_64)
            kwargs["fcompile"].get_target_triple = lambda: target.get("mtriple")
        executable.export_library(str(tmp / LIBRARY), **kwargs)
        device_code = targets.family(target).check_build(executable, target, tmp)
        manifest = _manifest(model, proto, shapes, target, tuned, device_code, source_path)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def _cross_compiler(target: dict[str, Any], given: str | None) -> str | None:
    """The C++ cross compiler a target for another CPU needs (None for this machine); OneByOneError when absent."""
    if not targets.is_cross(target):
        return None
    cc = given or targets.family(target).cross_compiler
    if cc is None:
        raise OneByOneError(f"{target.get('mtriple')} is not this machine's CPU: give cross_compiler",
                            cli=f"{target.get('mtriple')} is not this machine's CPU: give --cross-compiler")
    if shutil.which(cc) is None:
        raise OneByOneError(f"cross compiler {cc!r} not found; install it (Debian: apt-get install g++-aarch64-linux-gnu)")
    return cc


def _ready_to_tune(target: dict[str, Any], cc: str | None, remote, cost_model: str) -> dict[str, Any]:
    """Check, before any work, that tuning can time candidates where the target runs; the target with the core count
    MetaSchedule plans parallel loops by."""
    import tvm

    tuning.resolve_cost_model(cost_model)  # a bad choice is said before any work
    if cc and remote is None:
        raise OneByOneError("tuning for another CPU times the candidates on the device: give remote (a "
                            "runtime.remote.Remote of a board running tvm.exec.rpc_server)",
                            cli="tuning for another CPU times the candidates on the device: give --rpc HOST:PORT "
                            "(a board running tvm.exec.rpc_server, or `onebyone emulate aarch64`)")
    family = targets.family(target)
    if family.device != "cpu" and remote is None:
        family.load_runtime()  # one-line error naming the missing driver or runtime library
        if not tvm.device(family.device, 0).exist:
            raise OneByOneError(f"tuning for {family.name} times the candidates on a {family.device} device, and this "
                                "machine has none")
    if family.device == "cpu" and "num-cores" not in target:
        target = dict(target, **{"num-cores": remote.num_threads() if remote else (os.cpu_count() or 1)})
    return target


def _build(proto, shapes, target, tune_trials, tuning_db, progress, remote, cc, cost_model):
    """(executable, tuning record or None): the model imported by TVM's ONNX frontend and compiled, tuned or with a
    tuning database when there is one."""
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    try:
        mod = from_onnx(proto, shape_dict={k: list(v) for k, v in shapes.items()}, keep_params_in_input=False)
    except Exception as exc:  # noqa: BLE001 - the frontend raises many types
        raise OneByOneError(f"TVM cannot import the model: {first_line(exc)}") from None
    try:
        if tune_trials > 0 or tuning.has_records(tuning_db):
            db = tuning_db or tempfile.mkdtemp(prefix="onebyone-tuning-")
            return tuning.compile_tuned(mod, tvm.target.Target(target), tune_trials, db, progress,
                                        remote=remote, cross_compiler=cc, cost_model=cost_model)
        return tvm.compile(mod, target=tvm.target.Target(target)), None
    except OneByOneError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise OneByOneError(f"TVM failed to compile for {json.dumps(target)}: {first_line(exc)}") from None


def _manifest(model, proto, shapes, target, tuned, device_code, source_path) -> dict[str, Any]:
    import tvm

    import onebyone

    digest = hashlib.sha256(Path(source_path).read_bytes()).hexdigest() if source_path else hashlib.sha256(
        ir.serde.serialize_model(model).SerializeToString()).hexdigest()
    return {
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

    def runner(self, feed: dict[str, np.ndarray]):
        """A callable that runs the model once on `feed` (kept on the device) and waits for it: the unit that
        latency.timer.compare times."""
        args = device_args(self.manifest, feed, self.device)
        main = self.vm["main"]

        def run():
            main(*args)
            self.device.sync()

        return run

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

    return [tvm.runtime.tensor(np.asarray(feed[i["name"]], dtype=i["dtype"], order="C"), device) for i in manifest["inputs"]]


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
        raise OneByOneError(f"{p}: built for {manifest['target'].get('mtriple')}; run it on that device (runtime.remote)",
                            cli=f"{p}: built for {manifest['target'].get('mtriple')}; run it on that device (--rpc)")
    family = targets.family(manifest["target"])
    family.load_runtime(p)
    device = tvm.device(manifest["device"], 0)
    if not device.exist:
        raise OneByOneError(f"{p}: a {family.name} package needs a {manifest['device']} device, and this machine has none")
    try:
        lib = tvm.runtime.load_module(str(p / manifest["library"]))
    except Exception as exc:  # noqa: BLE001
        raise OneByOneError(f"{p}: cannot load the library ({first_line(exc)})") from None
    return Package(p, manifest, relax.VirtualMachine(lib, device), device)


def _inferred_outputs(proto: onnx.ModelProto):
    try:
        return onnx.shape_inference.infer_shapes(proto).graph.output
    except Exception:  # noqa: BLE001 - shapes are informative only
        return proto.graph.output
