"""TVM as the runtime a latency model measures on: each model compiled for the target (with the tuning database
applied where it has records for a kernel, else TVM's default code) and timed on this machine, on one device over
TVM RPC, or on a pool of devices behind an RPC tracker (runtime.pool), alternating in one session per device."""

from __future__ import annotations

import os
import tempfile
import threading

import onnx_ir as ir

from onebyone.latency import timer
from onebyone.latency.runtimes import cpu_model
from onebyone.runtime import package

_COMPILING = threading.Lock()  # TVM's frontend and compiler keep global state: one compile at a time per process


class TvmRuntime:
    """Compiles for `target` (a target dict, runtime.targets.resolve) and times where it runs: here when `pool` is
    None, else on the pool's devices (runtime.pool.DevicePool). With `tuning_db` (a folder of MetaSchedule records),
    kernels with records use them."""

    def __init__(self, target: dict, pool=None, tuning_db: str | os.PathLike | None = None) -> None:
        import tvm

        from onebyone.runtime import targets, tuning

        self.target, self.pool = target, pool
        self.tuning_db = str(tuning_db) if tuning.has_records(tuning_db) else None
        if pool is None and targets.is_cross(target):
            from onebyone.errors import OneByOneError

            raise OneByOneError(f"timing for {target.get('mtriple')} runs on the device: give a pool (--rpc HOST:PORT "
                                "or --rpc-tracker HOST:PORT --device-key KEY)")
        threads = pool.num_threads() if pool is not None else int(tvm.get_global_func("runtime.NumThreads")())
        self.threads = threads
        self.description = {"name": "tvm", "version": tvm.__version__, "target": target, "threads": threads,
                            "device": pool.label if pool is not None else cpu_model(),
                            "devices": len(pool) if pool is not None else 1,
                            "tuning_db": bool(self.tuning_db)}

    def _compile(self, model, folder: str, feed: dict) -> str:
        """The model compiled for the shapes of `feed` (a model with dynamic input dims runs at those)."""
        model = model if isinstance(model, ir.Model) else ir.serde.deserialize_model(model)
        shapes = {name: tuple(array.shape) for name, array in feed.items()}
        with _COMPILING:
            return str(package.compile_model(model, self.target, folder, shapes, tuning_db=self.tuning_db))

    def time(self, models: list, feeds: list[dict], repeats: int, device=None) -> list[timer.Timing]:
        """Timings of `models` on their feeds, compiled here and run alternating on `device` (a runtime.remote.Remote;
        None: the pool's first device, or this machine)."""
        if device is None and self.pool is not None:
            device = self.pool.remotes[0]
        with tempfile.TemporaryDirectory(prefix="onebyone-timed-") as tmp:
            paths = [self._compile(m, os.path.join(tmp, f"m{i}"), f) for i, (m, f) in enumerate(zip(models, feeds))]
            runs = [device.runner(p, f) if device is not None else package.load_package(p).runner(f)
                    for p, f in zip(paths, feeds)]
            return timer.compare(runs, repeats)

    def spread(self, items: list, work) -> list:
        if self.pool is None:
            return [work(item, None) for item in items]
        return self.pool.spread(items, work)

