"""The latency model: each candidate conv's measured time, and its rewritten pair's at the ranks a policy may pick,
on the runtime that will run the model (onnxruntime on this CPU with the deployed thread count, or TVM for a target:
here, on a device over RPC, or on a pool of devices behind an RPC tracker). Cached on disk."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from onebyone.errors import OneByOneError
from onebyone.latency import micro, sharing, timer
from onebyone.latency.runtimes import OnnxRuntimeCPU
from onebyone.passes import plan

MAX_RANKS = 10  # measured ranks per conv
FORMAT = 2  # of the cached measurements (2: the runtime's fixed cost per run taken out)


def ranks_to_measure(d: plan.Decision) -> list[int]:
    """Candidate ranks below break-even, favouring the widths vector units like (multiples of 32, 16, 8, 4), at most
    MAX_RANKS of them, always including the smallest and the largest candidate."""
    ranks = [int(r) for r in plan.candidate_ranks(d, 1)]
    if len(ranks) <= MAX_RANKS:
        return ranks
    chosen = {ranks[0], ranks[-1]}
    for step in (32, 16, 8, 4, 2, 1):
        for r in ranks:
            if r % step == 0 and len(chosen) < MAX_RANKS:
                chosen.add(r)
    return sorted(chosen)


class LatencyModel:
    """Measures, per candidate conv, `time_before` (ms) and `times_after` {rank: ms} on `runtime` (default: onnxruntime
    on this CPU with `threads` intra-op threads, 0: onnxruntime's choice; or a latency.tvm_runtime.TvmRuntime), each a
    Timing (median and noise), alternating original and pairs on one device. With several devices (a tracker pool)
    the convs are spread over them. Results are cached in `cache_dir` (None: not cached), keyed by the conv's
    signature, the rank, the runtime and its version, the device (CPU model, target, device key) and the threads.
    With `int8` the micro-models are timed as the model will be deployed after INT8 quantization (onebyone.int8:
    each micro-model quantized before it is timed; onnxruntime only)."""

    def __init__(self, threads: int = 0, cache_dir: str | os.PathLike | None = None, repeats: int = 15,
                 runtime=None, int8: bool = False, share_kernels: bool | None = None,
                 share_tolerance: float = sharing.TOLERANCE) -> None:
        self.backend = runtime if runtime is not None else OnnxRuntimeCPU(threads)
        self.threads = self.backend.threads
        self.repeats = repeats
        self.cache = Path(cache_dir) if cache_dir is not None else None
        self.int8 = int8
        self._share = share_kernels
        self.share_tolerance = share_tolerance
        if int8 and self.backend.description["name"] != "onnxruntime":
            raise OneByOneError("INT8 models are timed on onnxruntime only (--runtime onnxruntime)")
        self.runtime = {**self.backend.description, **({"precision": "int8"} if int8 else {})}
        self.hits = self.misses = 0
        self._memo: dict[str, dict] = {}  # this process's measurements, so that repeated passes measure once

    @property
    def shares_kernels(self) -> bool:
        """Whether identical convs should get one rank (default: on a runtime that tunes a kernel per shape, TVM;
        `share_kernels` at construction decides otherwise, e.g. to measure what sharing buys)."""
        return self.runtime["name"] == "tvm" if self._share is None else self._share

    def share_kernel_shapes(self, decisions: list[plan.Decision]) -> int:
        """latency.sharing.share_kernel_shapes with this model's measurements; how many convs changed rank."""
        return sharing.share_kernel_shapes(decisions, self._key, self.pair_time, self.share_tolerance)

    def time_models(self, models: list, feeds: list[dict], repeats: int | None = None) -> list[timer.Timing]:
        """Timings of whole models on this runtime, measured alternating on one device."""
        return self.backend.time(models, feeds, repeats or self.repeats)

    def _key(self, d: plan.Decision) -> str:
        i = d.info
        sig = [FORMAT, list(i.input_shape), i.out_channels, list(i.kernel), list(i.strides), list(i.dilations), list(i.pads),
               i.auto_pad, i.groups, self.runtime, self.repeats] + ([d.form] if d.form != "input" else []) + (
            [i.matrix.op_type, i.matrix.trans_a, list(micro.input_shape(i))] if i.matrix is not None else [])
        return hashlib.sha256(json.dumps(sig, sort_keys=True).encode()).hexdigest()[:24]

    def measure(self, decisions: list[plan.Decision], progress=None) -> None:
        """Attach `latency` (a dict: before, after {rank: Timing}) to every candidate decision."""
        live = [d for d in decisions if d.candidate and d.info.input_shape]
        done = [0]

        def one(d, device):
            found = self._conv(d, device=device)
            done[0] += 1
            if progress:
                progress(done[0], len(live))
            return found

        for d, found in zip(live, self.backend.spread(live, one)):
            d.latency = found

    def pair_time(self, d: plan.Decision, rank: int) -> timer.Timing:
        """The rewritten pair's time at `rank`, measured now (beside the original conv) if it was not yet."""
        if rank not in d.latency["after"]:
            extra = self._conv(d, [rank])
            d.latency["after"][rank] = extra["after"][rank]
        return d.latency["after"][rank]

    def _conv(self, d: plan.Decision, ranks: list[int] | None = None, device=None) -> dict:
        memo = f"{self._key(d)}:{ranks}"
        if memo not in self._memo:
            self._memo[memo] = self._load_or_time(d, ranks, device)
        found = self._memo[memo]
        return {"before": found["before"], "after": dict(found["after"])}

    def _load_or_time(self, d: plan.Decision, ranks: list[int] | None, device=None) -> dict:
        suffix = "".join(f"-{r}" for r in ranks or [])  # extra ranks asked for later are files of their own
        path = self.cache / f"latency-{self._key(d)}{suffix}.json" if self.cache else None
        ranks = ranks or ranks_to_measure(d)
        if path is not None and path.is_file():
            data = json.loads(path.read_text())
            if all(str(r) in data["after"] for r in ranks):
                self.hits += 1
                return {"before": timer.Timing(**data["before"]),
                        "after": {int(r): timer.Timing(**t) for r, t in data["after"].items()}}
        self.misses += 1
        models = [micro.original(d.info)] + [micro.pair(d.info, r, form=d.form) for r in ranks]
        x = np.random.default_rng(0).standard_normal(micro.input_shape(d.info)).astype(np.float32)
        if self.int8:
            from onebyone.int8 import quantize

            models = [quantize(m, [{"x": x}], preprocess=False, float_outputs=False) for m in models]
        models.append(micro.passthrough(d.info))
        timings = self.backend.time(models, [{"x": x}] * len(models), self.repeats, device)
        # a model pays the runtime's fixed cost per run (call, input copy, thread-pool wake-up) once, not per conv
        fixed = timings[-1].ms
        timings = [_less(t, fixed) for t in timings[:-1]]
        result = {"before": timings[0], "after": dict(zip(ranks, timings[1:]))}
        if path is not None:
            from onebyone.atomic import atomic_file

            path.parent.mkdir(parents=True, exist_ok=True)
            data = {"before": result["before"].summary(), "after": {str(r): t.summary() for r, t in result["after"].items()}}
            with atomic_file(path) as tmp:
                tmp.write_text(json.dumps(data))
        return result


def _less(t: timer.Timing, fixed_ms: float) -> timer.Timing:
    """`t` without a fixed cost (never below 1% of what was measured); its noise relative to what is left."""
    ms = max(t.ms - fixed_ms, 0.01 * t.ms)
    return timer.Timing(ms, t.noise * t.ms / ms if ms > 0 else t.noise)
