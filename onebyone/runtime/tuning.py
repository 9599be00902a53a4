"""MetaSchedule tuning that works on a small machine, and compiling with a saved tuning database.

Facts this relies on (TVM 0.27): the stock LocalBuilder's workers import tvm.s_tir.tensor_intrin (20–28 s each)
and time out, so candidates are built in this process instead (InProcessBuilder); the xgb cost model needs xgboost
(the `tune` extra; TVM 0.27's XGBModel works with xgboost 3.2), so without it the random cost model is used.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import tempfile
from pathlib import Path

from onebyone.errors import OneByOneError


def _builder(cross_compiler: str | None = None):
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
            out = []
            for inp in build_inputs:
                try:
                    out.append(BuilderResult(export(default_build(inp.mod, inp.target, None)), None))
                except Exception as exc:  # noqa: BLE001 - a failed candidate is reported to the tuner
                    out.append(BuilderResult(None, str(exc)[:1000]))
            return out

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


def _device_runner(remote):
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
            out = []
            for inp in runner_inputs:
                try:
                    out.append(Done(RunnerResult(time_one(inp), None)))
                except Exception as exc:  # noqa: BLE001 - a failed candidate is reported to the tuner
                    out.append(Done(RunnerResult(None, str(exc)[:1000])))
            return out

    return DeviceRunner()


def lower_for_tuning(mod, target):
    """Legalize and fuse a Relax module so that its TIR functions become tuning tasks."""
    import tvm
    from tvm import relax

    seq = tvm.transform.Sequential([
        relax.transform.DecomposeOpsForInference(), relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(), relax.transform.FuseOps(), relax.transform.FuseTIR(),
    ])
    with target:
        return seq(mod)


def has_records(db_dir: str | os.PathLike | None) -> bool:
    d = Path(db_dir) if db_dir else None
    return bool(d and (d / "database_tuning_record.json").is_file() and (d / "database_tuning_record.json").stat().st_size > 0)


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


def _load_cuda_runtime_in_worker() -> None:
    """LocalRunner worker initializer: the wheel's CUDA runtime is a sidecar library that a fresh worker process
    does not load by itself ("a loader of that name is not registered")."""
    from onebyone.runtime.package import load_cuda_runtime

    load_cuda_runtime()


def _trial_watch(trials: int, progress=None):
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


MIN_TRIALS_PER_TASK = 8
FLOP_SHARE = 0.9


def select_tasks(tasks, trials: int) -> list:
    """The tasks worth tuning with `trials` trials: the heaviest (FLOPs x number of calls) first, until they hold
    FLOP_SHARE of the model's FLOPs, and no more than give each MIN_TRIALS_PER_TASK trials (at least one task).
    A budget spread thinner than that gives each kernel one or two random schedules, which are often slower than
    TVM's default code; the kernels left out keep the default code."""
    from tvm.s_tir.analysis import estimate_tir_flops

    def cost(task) -> float:
        try:
            return float(estimate_tir_flops(task.dispatched[0])) * task.weight
        except Exception:  # noqa: BLE001 - ops whose FLOPs TVM cannot count (e.g. data movement) cost ~nothing
            return 0.0

    ranked = sorted(tasks, key=cost, reverse=True)
    total = sum(cost(t) for t in ranked) or 1.0
    cap = max(1, trials // MIN_TRIALS_PER_TASK)
    chosen, share = [], 0.0
    for task in ranked:
        if len(chosen) >= cap or (chosen and share >= FLOP_SHARE):
            break
        chosen.append(task)
        share += cost(task) / total
    return chosen


def _commit_default_schedules(database, tasks, target, builder, runner, progress=None) -> int:
    """Measure every task's default (unscheduled) code with the tuner's own builder and runner and record it as one
    more candidate, so that applying the database never picks a tuned kernel slower than the default one. CPU only
    (on GPUs unscheduled code does not run). Returns how many were recorded."""
    from tvm.s_tir import Schedule
    from tvm.s_tir import meta_schedule as ms

    if target.kind.name != "llvm":
        return 0
    recorded = 0
    for task in tasks:
        mod = task.dispatched[0]
        func = mod["main"]
        built = builder.build([ms.builder.BuilderInput(mod, target)])[0]
        if built.error_msg:
            continue
        args = ms.arg_info.ArgInfo.from_prim_func(func)
        result = runner.run([ms.runner.RunnerInput(built.artifact_path, "cpu", args)])[0].result()
        if result.error_msg or not result.run_secs:
            continue
        workload = database.commit_workload(mod)
        database.commit_tuning_record(ms.database.TuningRecord(
            Schedule(mod).trace, workload, [float(v) for v in result.run_secs], target, args))
        recorded += 1
    if progress:
        progress(f"recorded the default code of {recorded} kernel(s) as a baseline")
    return recorded


COST_MODELS = ("auto", "xgb", "random")


def resolve_cost_model(name: str = "auto") -> str:
    """'xgb' or 'random': 'auto' is XGBoost when the xgboost package is importable (the `tune` extra), else random
    search. OneByOneError for an unknown name or 'xgb' without xgboost."""
    if name not in COST_MODELS:
        raise OneByOneError(f"unknown cost model {name!r}; choose one of {', '.join(COST_MODELS)}")
    has_xgb = importlib.util.find_spec("xgboost") is not None
    if name == "xgb" and not has_xgb:
        raise OneByOneError("the xgb cost model needs xgboost: pip install 'onebyone[tune]' (or --cost-model random)")
    return "xgb" if name == "xgb" or (name == "auto" and has_xgb) else "random"


def compile_tuned(mod, target, trials: int, db_dir: str | os.PathLike, progress=None, remote=None,
                  cross_compiler: str | None = None, cost_model: str = "auto"):
    """Tune `mod` for `target` with `trials` MetaSchedule trials (0: reuse the records already in `db_dir`), then
    compile it with the database applied. Only the heaviest kernels are tuned (see select_tasks); on CPU each tuned
    kernel's default code is measured too, so a tuned build never uses a kernel that measured slower than the untuned
    build's. Candidates run on this machine, or with `remote` (a Remote) on that device, linked by `cross_compiler`.
    Returns (executable, info for the manifest)."""
    from tvm.s_tir import meta_schedule as ms

    db_dir = Path(db_dir)
    db_dir.mkdir(parents=True, exist_ok=True)
    lowered = lower_for_tuning(mod, target)
    info: dict = {"trials": trials, "database": str(db_dir)}
    if trials > 0:
        # MetaSchedule logs every step to stdout; keep the console to warnings (details stay in db_dir/logs)
        logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
        cost_model = resolve_cost_model(cost_model)
        all_tasks = ms.relax_integration.extract_tasks(lowered, target)
        chosen = select_tasks(all_tasks, trials)
        if progress:
            progress(f"tuning {len(chosen)} of {len(all_tasks)} kernels with {trials} trials "
                     f"(MetaSchedule, {cost_model} cost model, database {db_dir})")
        per_iter = max(2, min(16, trials // len(chosen)))
        builder = _builder(cross_compiler)
        if remote is not None:
            runner = _device_runner(remote)
        else:
            runner = ms.runner.LocalRunner(
                timeout_sec=60, initializer=_load_cuda_runtime_in_worker if target.kind.name == "cuda" else None)
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(chosen, str(db_dir))
        watch = _trial_watch(trials, progress)
        callbacks = [*ms.measure_callback.MeasureCallback.create("default"), watch]
        try:
            database = ms.tune.tune_tasks(
                tasks=contexts, task_weights=weights, work_dir=str(db_dir), max_trials_global=trials,
                num_trials_per_iter=per_iter, builder=builder, runner=runner, cost_model=cost_model,
                measure_callbacks=callbacks,
            )
        except ValueError as exc:
            raise OneByOneError(f"tuning failed: {exc}") from None
        if watch.done and not watch.ran:
            raise OneByOneError(f"tuning: none of the {watch.done} candidates ran ({watch.first_error})")
        baselines = _commit_default_schedules(database, chosen, target, builder, runner, progress)
        info.update(cost_model=cost_model, tuned_kernels=len(chosen), kernels=len(all_tasks), baselines=baselines,
                    measured_on=remote.address if remote is not None else "this machine")
    else:
        if not has_records(db_dir):
            raise OneByOneError(f"{db_dir}: no tuning records; tune first with --tune-trials N")
        database = ms.database.JSONDatabase(work_dir=str(db_dir))
    executable = ms.relax_integration.compile_relax(database, lowered, target, None)
    info["records"] = len(database) if hasattr(database, "__len__") else None
    return executable, info
