"""MetaSchedule tuning that works on a small machine, and compiling with a saved tuning database.

Facts this relies on (TVM 0.27): the stock LocalBuilder's workers import tvm.s_tir.tensor_intrin (20–28 s each)
and time out, so candidates are built in this process instead (InProcessBuilder); the default xgb cost model needs
xgboost, which is not a dependency, so the random cost model is used unless xgboost is importable.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

from onebyone.errors import OneByOneError


def _builder():
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import default_build, default_export

    @derived_object
    class InProcessBuilder(PyBuilder):
        """Builds each candidate in this process (no popen workers, no per-worker import cost)."""

        def build(self, build_inputs):
            out = []
            for inp in build_inputs:
                try:
                    out.append(BuilderResult(default_export(default_build(inp.mod, inp.target, None)), None))
                except Exception as exc:  # noqa: BLE001 - a failed candidate is reported to the tuner
                    out.append(BuilderResult(None, str(exc)[:1000]))
            return out

    return InProcessBuilder()


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


def compile_tuned(mod, target, trials: int, db_dir: str | os.PathLike, progress=None):
    """Tune `mod` for `target` with `trials` MetaSchedule trials (0: reuse the records already in `db_dir`), then
    compile it with the database applied. Returns (executable, info for the manifest)."""
    from tvm.s_tir import meta_schedule as ms

    db_dir = Path(db_dir)
    db_dir.mkdir(parents=True, exist_ok=True)
    lowered = lower_for_tuning(mod, target)
    if trials > 0:
        # MetaSchedule logs every step to stdout; keep the console to warnings (details stay in db_dir/logs)
        logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
        if progress:
            progress(f"tuning {trials} trials (MetaSchedule, database {db_dir})")
        cost_model = "xgb" if importlib.util.find_spec("xgboost") else "random"
        # Spread a small budget over every task: the scheduler gives each task one round before it repeats one.
        n_tasks = max(1, len(ms.relax_integration.extract_tasks(lowered, target)))
        per_iter = max(2, min(16, trials // n_tasks))
        try:
            database = ms.relax_integration.tune_relax(
                lowered, {}, target, str(db_dir), max_trials_global=trials, num_trials_per_iter=per_iter,
                builder=_builder(), runner=ms.runner.LocalRunner(timeout_sec=60), cost_model=cost_model,
            )
        except ValueError as exc:
            raise OneByOneError(f"tuning failed: {exc}") from None
    else:
        if not has_records(db_dir):
            raise OneByOneError(f"{db_dir}: no tuning records; tune first with --tune-trials N")
        database = ms.database.JSONDatabase(work_dir=str(db_dir))
        cost_model = None
    executable = ms.relax_integration.compile_relax(database, lowered, target, None)
    return executable, {"trials": trials, "database": str(db_dir), "cost_model": cost_model,
                        "records": len(database) if hasattr(database, "__len__") else None}
