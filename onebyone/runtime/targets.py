"""Named TVM targets (JSON dicts) that users can extend: cpu (this host), cuda, aarch64 and ARM core presets."""

from __future__ import annotations

import functools
import os
import json
from typing import Any

from onebyone.errors import OneByOneError


@functools.cache
def host_cpu() -> str:
    """The host CPU as LLVM names it (e.g. znver3, rocketlake), so compiled code uses exactly its vector ISA."""
    from tvm.target import codegen

    return str(codegen.llvm_get_system_cpu())


def _cpu() -> dict[str, Any]:
    return {"kind": "llvm", "mcpu": host_cpu(), "num-cores": os.cpu_count() or 1}


PRESETS: dict[str, Any] = {
    "cpu": _cpu,
    "x86-64": lambda: {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64-v2"},
    # Limits that hold on every NVIDIA GPU since sm_30 (48 KiB static shared memory, 1024 threads, warps of 32).
    "cuda": lambda: {"kind": "cuda", "arch": "sm_90", "max_shared_memory_per_block": 49152,
                     "max_threads_per_block": 1024, "thread_warp_size": 32, "host": {"kind": "llvm"}},
    "aarch64": lambda: {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]},
    "cortex-a72": lambda: {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"]},
    "cortex-a76": lambda: {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76", "mattr": ["+neon", "+dotprod"]},
}


def register(name: str, target: dict[str, Any]) -> None:
    """Add (or replace) a named preset."""
    PRESETS[name] = lambda: dict(target)


def resolve(spec: str, **overrides: Any) -> dict[str, Any]:
    """A target dict from a preset name ('cpu', 'cuda', 'aarch64', ...), optionally 'name:key=value,...'
    (e.g. 'cuda:arch=sm_80'), or a JSON dict. Raises OneByOneError for unknown names or bad JSON."""
    spec = spec.strip()
    if spec.startswith("{"):
        try:
            target = json.loads(spec)
        except json.JSONDecodeError as exc:
            raise OneByOneError(f"--target: not valid JSON ({exc.msg})") from None
        if not isinstance(target, dict) or "kind" not in target:
            raise OneByOneError("--target JSON must be an object with a 'kind'")
    else:
        name, _, opts = spec.partition(":")
        if name not in PRESETS:
            raise OneByOneError(f"unknown target {name!r}; presets: {', '.join(PRESETS)} (or a JSON dict)")
        target = PRESETS[name]()
        for item in filter(None, opts.split(",")):
            key, eq, value = item.partition("=")
            if not eq:
                raise OneByOneError(f"--target {spec!r}: options are key=value, got {item!r}")
            target[key] = value
    target.update(overrides)
    return target


def device_kind(target: dict[str, Any]) -> str:
    """'cuda' or 'cpu': where a package built for `target` runs."""
    return "cuda" if target.get("kind") == "cuda" else "cpu"


def is_cross(target: dict[str, Any]) -> bool:
    """True when the target's triple is not this machine's (the library needs a cross toolchain)."""
    triple = target.get("mtriple") or (target.get("host") or {}).get("mtriple")
    if not triple:
        return False
    import platform

    return not triple.startswith(platform.machine())
