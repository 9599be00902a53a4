"""64-bit ARM boards: generic ARMv8-A with NEON, and Cortex-A72 / A76 presets; cross-compiled and linked here."""

from __future__ import annotations

from onebyone.runtime.targets.base import Family, register
from onebyone.verify.tolerances import Tolerances

AARCH64 = register(Family(
    name="aarch64",
    device="cpu",
    tolerances=Tolerances(max_rel_l2=1e-4, min_cosine=0.99999, min_top1=1.0, rtol=1e-4),
    claims=lambda t: t.get("kind") == "llvm" and "aarch64" in str(t.get("mtriple", "")),
    cross_compiler="aarch64-linux-gnu-g++",
    presets={
        "aarch64": lambda: {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]},
        "cortex-a72": lambda: {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"]},
        "cortex-a76": lambda: {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76",
                               "mattr": ["+neon", "+dotprod"]},
    },
))
