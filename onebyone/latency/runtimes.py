"""The runtimes a latency model measures on. Each times a list of models side by side (warm-up, alternating repeats,
medians and noise: latency.timer.compare) and describes itself for reports and cache keys; `spread` runs work items
on its devices (in parallel where it has several, e.g. a pool of boards behind an RPC tracker)."""

from __future__ import annotations

import platform

from onebyone.latency import timer


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class OnnxRuntimeCPU:
    """onnxruntime's CPU provider in this process with `threads` intra-op threads (0: onnxruntime's choice)."""

    def __init__(self, threads: int = 0) -> None:
        import onnxruntime as ort

        self.threads = threads
        self.description = {"name": "onnxruntime", "version": ort.__version__, "device": cpu_model(), "threads": threads}

    def time(self, models: list, feeds: list[dict], repeats: int, device=None) -> list[timer.Timing]:
        """Timings of `models` (ir.Model or ModelProto) on their feeds, measured alternating."""
        return timer.time_models(models, feeds, self.threads, repeats)

    def spread(self, items: list, work) -> list:
        return [work(item, None) for item in items]
