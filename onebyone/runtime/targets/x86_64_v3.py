"""`x86-64-v3`: portable x86-64 with AVX2 and FMA (Haswell and Zen and later): faster than x86-64 (v2) on every
server of the last ten years, without tying the package to this machine's CPU the way `cpu` does. (The example of a
target added as one file plus its registration.)"""

from __future__ import annotations

from onebyone.runtime.targets.base import register
from onebyone.runtime.targets.cpu import CPU

register(CPU.__class__(
    name="x86-64-v3",
    device=CPU.device,
    tolerances=CPU.tolerances,
    claims=lambda t: t.get("kind") == "llvm" and t.get("mcpu") == "x86-64-v3",
    presets={"x86-64-v3": lambda: {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64-v3"}},
))
