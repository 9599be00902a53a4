"""Named TVM targets (JSON dicts) grouped in families, one module each: cpu (this host, x86-64), x86-64-v3,
aarch64 boards, cuda. A new target is one module that registers its Family (see x86_64_v3.py), plus its import here.
"""

from __future__ import annotations

import json
from typing import Any

from onebyone.errors import OneByOneError
from onebyone.runtime.targets import aarch64, cpu, nvidia, x86_64_v3  # noqa: F401 - registration
from onebyone.runtime.targets.base import FAMILIES, PRESETS, Family, triple_is_foreign
from onebyone.runtime.targets.cpu import host_cpu  # noqa: F401 - part of the interface

__all__ = ["FAMILIES", "PRESETS", "Family", "device_kind", "family", "host_cpu", "is_cross", "register", "resolve"]


def register(name: str, target: dict[str, Any]) -> None:
    """Add (or replace) a named preset; its family is found from the dict like any other target's."""
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


def family(target: dict[str, Any]) -> Family:
    """The family a target dict belongs to (the most specific that claims it; a plain CPU target otherwise)."""
    for fam in sorted(FAMILIES, key=lambda f: f.name == "cpu"):  # the generic CPU family last
        if fam.claims(target):
            return fam
    raise OneByOneError(f"no target family takes {json.dumps(target)} (kinds: llvm, cuda)")


def device_kind(target: dict[str, Any]) -> str:
    """'cuda' or 'cpu': where a package built for `target` runs."""
    return family(target).device


def is_cross(target: dict[str, Any]) -> bool:
    """True when the target's triple is not this machine's (the library needs a cross toolchain)."""
    return triple_is_foreign(target)
