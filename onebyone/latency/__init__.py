"""Milliseconds, not MACs: per-conv latencies measured on the runtime that will run the model (the latency model),
and the whole model timed end to end, original and optimized side by side (never ship a slower model)."""

from onebyone.latency.model import LatencyModel

__all__ = ["LatencyModel"]
