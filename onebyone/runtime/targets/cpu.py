"""CPU targets of this machine's kind: `cpu` (this host, its CPU detected by LLVM) and `x86-64` (portable x86-64-v2)."""

from __future__ import annotations

import functools
import os

from onebyone.runtime.targets.base import Family, register, triple_is_foreign
from onebyone.verify.tolerances import Tolerances


@functools.cache
def host_cpu() -> str:
    """The host CPU as LLVM names it (e.g. znver3, rocketlake), so compiled code uses exactly its vector ISA."""
    from tvm.target import codegen

    return str(codegen.llvm_get_system_cpu())


CPU = register(Family(
    name="cpu",
    device="cpu",
    tolerances=Tolerances(max_rel_l2=1e-4, min_cosine=0.99999, min_top1=1.0, rtol=1e-4),
    claims=lambda t: t.get("kind") == "llvm" and not triple_is_foreign(t),
    presets={
        "cpu": lambda: {"kind": "llvm", "mcpu": host_cpu(), "num-cores": os.cpu_count() or 1},
        "x86-64": lambda: {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64-v2"},
    },
))
