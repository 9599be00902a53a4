"""NVIDIA GPUs through TVM's CUDA backend: device code checked to a cubin by nvcc at build time."""

from __future__ import annotations

import dataclasses

from onebyone.runtime import cuda
from onebyone.runtime.targets.base import Family, register
from onebyone.verify.tolerances import Tolerances


@dataclasses.dataclass(frozen=True)
class CudaFamily(Family):
    def load_runtime(self, where=None) -> None:
        cuda.load_cuda_runtime(where)

    def check_build(self, executable, target, folder):
        return cuda.check_device_code(executable, target, folder)

    def worker_initializer(self):
        from onebyone.runtime import measure

        return measure.load_cuda_runtime_in_worker


CUDA = register(CudaFamily(
    name="cuda",
    device="cuda",
    tolerances=Tolerances(max_rel_l2=1e-3, min_cosine=0.9999, min_top1=1.0, rtol=1e-3),
    claims=lambda t: t.get("kind") == "cuda",
    # Limits that hold on every NVIDIA GPU since sm_30 (48 KiB static shared memory, 1024 threads, warps of 32).
    presets={"cuda": lambda: {"kind": "cuda", "arch": "sm_90", "max_shared_memory_per_block": 49152,
                              "max_threads_per_block": 1024, "thread_warp_size": 32, "host": {"kind": "llvm"}}},
))
