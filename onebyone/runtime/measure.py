"""How tuning candidates are built and timed: in this process (no popen build workers: TVM 0.27's stock
LocalBuilder workers import tvm.s_tir.tensor_intrin for 20–28 s each and time out), on this machine or on a device
over TVM RPC, with a callback that counts what ran and reports progress."""

from __future__ import annotations

import os
import re
import tempfile


def _per_candidate(inputs, work, result):
    """result(work(inp), None) for each input, or result(None, message) where work raises: a failed candidate is
    reported to the tuner, not raised."""
    out = []
    for inp in inputs:
        try:
            out.append(result(work(inp), None))
        except Exception as exc:  # noqa: BLE001 - any failure of one candidate
            out.append(result(None, str(exc)[:1000]))
    return out


def in_process_builder(cross_compiler: str | None = None):
    """Builds each candidate in this process (no popen workers, no per-worker import cost); with `cross_compiler`,
    links it into a shared library for the device (the stock export is a tar of objects that the device would
    have to link itself)."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import default_build, default_export

    def export(rt_mod) -> str:
        if cross_compiler is None:
            return default_export(rt_mod)
        from tvm.support import cc

        path = os.path.join(tempfile.mkdtemp(prefix="onebyone-candidate-"), "candidate.so")
        rt_mod.export_library(path, fcompile=cc.cross_compiler(cross_compiler))
        return path

    @derived_object
    class InProcessBuilder(PyBuilder):
        def build(self, build_inputs):
            return _per_candidate(build_inputs, lambda inp: export(default_build(inp.mod, inp.target, None)),
                                  BuilderResult)

    return InProcessBuilder()


def _random_args(args_info, dev) -> list:
    """Random tensors for a candidate's arguments, made here and copied to `dev` (the runtime-only TVM library that
    boards and the emulator load has no random_fill_for_measure)."""
    import numpy as np
    import tvm

    rng = np.random.default_rng(0)
    out = []
    for info in args_info:
        kind, dtype, shape = info.as_json()
        if kind != "TENSOR":
            raise ValueError(f"cannot make a {kind} argument")
        out.append(tvm.runtime.tensor(rng.uniform(-1, 1, [int(d) for d in shape]).astype(str(dtype)), dev))
    return out


def device_runner(remote):
    """A MetaSchedule runner that times candidates on a TVM RPC device (`remote`: onebyone.runtime.remote.Remote),
    one at a time in this process, with the stock evaluator settings (3 runs of at least 100 ms in all)."""
    import itertools

    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.runner import EvaluatorConfig, PyRunner, PyRunnerFuture, RunnerResult
    from tvm.s_tir.meta_schedule.runner.utils import run_evaluator_common

    @derived_object
    class Done(PyRunnerFuture):
        def __init__(self, result):
            super().__init__()
            self.res = result

        def done(self):
            return True

        def result(self):
            return self.res

    names = itertools.count()
    config = EvaluatorConfig._normalized(None)

    def time_one(inp) -> list[float]:
        session = remote.session
        name = f"onebyone-candidate-{os.getpid()}-{next(names)}.so"
        session.upload(inp.artifact_path, name)
        try:
            rt_mod = session.load_module(name)
            dev = session.device(inp.device_type, 0)
            return run_evaluator_common(rt_mod, dev, config, [_random_args(inp.args_info, dev)])
        finally:
            session.remove(name)

    @derived_object
    class DeviceRunner(PyRunner):
        def run(self, runner_inputs):
            return _per_candidate(runner_inputs, time_one, lambda value, error: Done(RunnerResult(value, error)))

    return DeviceRunner()


def _error_line(message: str) -> str:
    """The line of a candidate's error message (often a whole traceback) that says what went wrong."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return "no message"
    raised = [i for i, line in enumerate(lines) if re.match(r"^[\w.]*(Error|Exception)\b.*:", line)]
    i = raised[-1] if raised else 0
    text = lines[i]
    if text.endswith(":") and i + 1 < len(lines):  # "RPCError: Error caught from RPC call:" then the cause
        text += " " + lines[i + 1]
    return text[:300]


def load_cuda_runtime_in_worker() -> None:
    """LocalRunner worker initializer: the wheel's CUDA runtime is a sidecar library that a fresh worker process
    does not load by itself ("a loader of that name is not registered")."""
    from onebyone.runtime.cuda import load_cuda_runtime

    load_cuda_runtime()


def trial_watch(trials: int, progress=None):
    """A MetaSchedule measure callback that counts measured candidates (`done`), those that ran (`ran`), keeps the
    first failure's message (`first_error`) and reports 'tuning: done/total trials' after each batch."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class TrialWatch(PyMeasureCallback):
        def __init__(self):
            self.done, self.ran, self.first_error = 0, 0, None

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            self.done += len(measure_candidates)
            for built, result in zip(builder_results, runner_results):
                error = built.error_msg or result.error_msg
                if error is None:
                    self.ran += 1
                elif self.first_error is None:
                    self.first_error = _error_line(str(error))
            if progress:
                progress(f"tuning: {min(self.done, trials)}/{trials} trials")

    return TrialWatch()
