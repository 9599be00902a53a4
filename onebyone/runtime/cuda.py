"""CUDA specifics of the runtime: loading TVM's CUDA runtime, and checking generated device code with nvcc."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from onebyone.errors import OneByOneError, first_line


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
        raise OneByOneError(f"{where}TVM's CUDA runtime cannot be loaded ({first_line(exc)}); a CUDA package needs an "
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


def check_device_code(executable, target: dict[str, Any], folder: Path) -> dict[str, Any]:
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
        raise OneByOneError(f"nvcc cannot compile the generated device code for {arch}: {first_line(proc.stderr)}")
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
