"""MetaSchedule tuning that works on a small machine, and compiling with a saved tuning database: which kernels to
tune, a measured default-code baseline per tuned kernel, the cost model. Candidates are built and timed as
onebyone.runtime.measure says. The xgb cost model needs xgboost (the `tune` extra; TVM 0.27's XGBModel works with
xgboost 3.2); without it random search is used.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path

from onebyone.errors import OneByOneError
from onebyone.runtime import measure


def prepare_for_tuning(mod, target):
    """The Relax module that is both tuned and compiled: batch norms and the like decomposed for inference."""
    from tvm import relax

    with target:
        return relax.transform.DecomposeOpsForInference()(mod)


def lower_for_tuning(prepared, target):
    """Legalize and fuse a prepared module exactly as MetaSchedule's compile_relax does before it applies the
    database, so that the TIR functions found here (the tuning tasks) are the ones it looks up. (compile_relax must
    get the prepared, not this lowered, module: lowering twice re-annotates each fused function's op pattern, and a
    function with that extra attribute matches no tuning record.)"""
    import tvm
    from tvm import relax
    from tvm.relax import pipeline

    try:
        dispatch = list(pipeline.library_dispatch_passes(target))
    except (ValueError, AttributeError):
        dispatch = []
    seq = tvm.transform.Sequential([
        *dispatch, relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant(),
        relax.transform.FuseOps(), relax.transform.FuseTIR(),
    ])
    with target:
        return seq(prepared)


def applied_kernels(lowered, target, database) -> int:
    """How many kernels of the compiled model take their schedule from `database` (a tuned one or a recorded
    default), i.e. how many lookups compile_relax's MetaScheduleApplyDatabase will hit. `lowered`: from
    lower_for_tuning, the same lowering compile_relax applies."""
    import tvm
    from tvm import relax

    with target, database, tvm.transform.PassContext(opt_level=3):
        applied = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(lowered)
    return sum(1 for f in applied.functions.values()
               if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and "tirx.is_scheduled" in f.attrs)


def has_records(db_dir: str | os.PathLike | None) -> bool:
    d = Path(db_dir) if db_dir else None
    return bool(d and (d / "database_tuning_record.json").is_file() and (d / "database_tuning_record.json").stat().st_size > 0)


MIN_TRIALS_PER_TASK = 4
FLOP_SHARE = 0.9


def task_cost(task) -> float:
    """FLOPs x number of calls of an extracted tuning task (0 for kernels whose FLOPs TVM cannot count, e.g. data
    movement, which cost about nothing)."""
    from tvm.s_tir.analysis import estimate_tir_flops

    try:
        return float(estimate_tir_flops(task.dispatched[0])) * task.weight
    except Exception:  # noqa: BLE001
        return 0.0


def coverage(tasks, database) -> dict:
    """How much of a model the database covers: its kernels, those with records, and their share of the FLOPs."""
    costs = [task_cost(t) for t in tasks]
    have = [database.has_workload(t.dispatched[0]) for t in tasks]
    total = sum(costs) or 1.0
    return {"kernels": len(tasks), "kernels_with_records": sum(have),
            "flops_covered": round(sum(c for c, h in zip(costs, have) if h) / total, 4)}


def select_tasks(tasks, trials: int, covered=None) -> list:
    """The tasks worth tuning with `trials` trials: the heaviest (FLOPs x number of calls) first, until they (with the
    tasks `covered(task)` says already have records, which are never chosen again) hold FLOP_SHARE of the model's
    FLOPs, and no more than give each MIN_TRIALS_PER_TASK trials. Coverage beats depth at small budgets: on open_nsfw
    the best of 4 random schedules of a conv already ran 4–25x faster than TVM's default code for it, the best of 8
    up to 46x; kernels left out keep the default code."""
    costs = {id(t): task_cost(t) for t in tasks}
    total = sum(costs.values()) or 1.0
    done = {id(t) for t in tasks if covered is not None and covered(t)}
    share = sum(costs[i] for i in done) / total
    ranked = sorted((t for t in tasks if id(t) not in done), key=lambda t: costs[id(t)], reverse=True)
    cap = max(1, trials // MIN_TRIALS_PER_TASK)
    chosen = []
    for task in ranked:
        if len(chosen) >= cap or ((chosen or done) and share >= FLOP_SHARE):
            break
        chosen.append(task)
        share += costs[id(task)] / total
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
        shutil.rmtree(os.path.dirname(built.artifact_path), ignore_errors=True)
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
        raise OneByOneError("the xgb cost model needs xgboost: pip install 'onebyone[tune]' (or cost_model='random')",
                            cli="the xgb cost model needs xgboost: pip install 'onebyone[tune]' (or --cost-model random)")
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
    prepared = prepare_for_tuning(mod, target)
    lowered = lower_for_tuning(prepared, target)
    tasks = ms.relax_integration.extract_tasks(lowered, target)
    info: dict = {"trials": trials, "database": str(db_dir)}
    if trials > 0:
        database = _tune(tasks, target, trials, db_dir, progress, remote, cross_compiler, cost_model, info)
    else:
        if not has_records(db_dir):
            raise OneByOneError(f"{db_dir}: no tuning records; tune first (tune_trials > 0)",
                                cli=f"{db_dir}: no tuning records; tune first with --tune-trials N")
        database = ms.database.JSONDatabase(work_dir=str(db_dir))
    info["applied_kernels"] = applied_kernels(lowered, target, database)
    info["coverage"] = coverage(tasks, database)
    executable = ms.relax_integration.compile_relax(database, prepared, target, None)
    info["records"] = len(database) if hasattr(database, "__len__") else None
    return executable, info


def _tune(all_tasks, target, trials, db_dir: Path, progress, remote, cross_compiler, cost_model, info: dict):
    """Run MetaSchedule over the heaviest of `all_tasks` (the model's extracted tuning tasks) and record the default
    code of each as a candidate; fills `info` (cost model, kernels, baselines, where candidates were timed) and
    returns the database."""
    from tvm.s_tir import meta_schedule as ms

    # MetaSchedule logs every step to stdout; keep the console to warnings (details stay in db_dir/logs)
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    cost_model = resolve_cost_model(cost_model)
    known = ms.database.JSONDatabase(work_dir=str(db_dir)) if has_records(db_dir) else None
    recorded = {id(t) for t in all_tasks if known is not None and known.has_workload(t.dispatched[0])}
    # kernels without records first (a rewritten model tuned from the original's database: its new kernels); when
    # every kernel worth tuning has records (the same model again), the heaviest are tuned deeper
    chosen = select_tasks(all_tasks, trials, lambda t: id(t) in recorded)
    reused = len(recorded) if chosen else 0
    chosen = chosen or select_tasks(all_tasks, trials)
    info["reused_kernels"] = reused
    if progress:
        progress(f"tuning {len(chosen)} of {len(all_tasks)} kernels with {trials} trials "
                 + (f"({reused} already tuned in the database, reused) " if reused else "")
                 + f"(MetaSchedule, {cost_model} cost model, database {db_dir})")
    per_iter = max(2, min(16, trials // len(chosen)))
    builder = measure.in_process_builder(cross_compiler)
    if remote is not None:
        runner = measure.device_runner(remote)
    else:
        from onebyone.runtime import targets

        initializer = targets.family({"kind": target.kind.name}).worker_initializer()
        runner = ms.runner.LocalRunner(timeout_sec=300, initializer=initializer)
    contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(chosen, str(db_dir))
    watch = measure.trial_watch(trials, progress)
    callbacks = [*ms.measure_callback.MeasureCallback.create("default"), watch]
    try:
        database = ms.tune.tune_tasks(
            tasks=contexts, task_weights=weights, work_dir=str(db_dir), max_trials_global=trials,
            num_trials_per_iter=per_iter, builder=builder, runner=runner, cost_model=cost_model,
            measure_callbacks=callbacks,
        )
        if watch.done and not watch.ran:
            raise OneByOneError(f"tuning: none of the {watch.done} candidates ran ({watch.first_error})")
        baselines = _commit_default_schedules(database, chosen, target, builder, runner, progress)
    except ValueError as exc:
        raise OneByOneError(f"tuning failed: {exc}") from None
    finally:  # the local runner's worker process ends now, not whenever the runner is collected
        if hasattr(runner, "pool"):
            runner.pool.shutdown()
    info.update(cost_model=cost_model, tuned_kernels=len(chosen), kernels=len(all_tasks), baselines=baselines,
                measured_on=remote.address if remote is not None else "this machine")
    return database
