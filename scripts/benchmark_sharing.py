#!/usr/bin/env python
"""Does one kernel shape per group of identical convs pay on tuned TVM? One run on this CPU: the data-aware time budget
chosen with TVM as the runtime (`--runtime tvm`): each conv at its own rank, identical convs given one rank when that
costs the group at most 5% more measured time (the default on TVM), and at most 50%; then the original tuned with N
MetaSchedule trials, and each rewritten model tuned with N trials from a copy of the original's database (its
untouched kernels keep their records); all four timed alternating. Prints a table, writes JSON.

    python scripts/benchmark_sharing.py [--model opennsfw] [--time 0.5] [--trials 128] [--repeats 10]
                                        [--json benchmarks/tvm-sharing.json]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time

import onnx_ir as ir
from rich.console import Console
from rich.table import Table

from onebyone import RankPolicy, optimize
from onebyone.latency import LatencyModel
from onebyone.latency.tvm_runtime import TvmRuntime
from onebyone.models import tasks
from onebyone.models.real import real_model
from onebyone.report import write_json_atomic
from onebyone.runtime import package, targets
from onebyone.verify.onnxruntime_run import run_samples


def kernel_shapes(model: ir.Model) -> int:
    """Distinct conv kernels of a model (input channels, weight shape, attributes): what TVM tunes one by one."""
    seen = set()
    for node in model.graph:
        if node.op_type == "Conv":
            w = node.inputs[1]
            attrs = tuple(sorted((k, str(v.value)) for k, v in node.attributes.items()))
            seen.add((str(node.inputs[0].shape), str(w.shape), attrs))
    return len(seen)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="opennsfw")
    ap.add_argument("--time", type=float, default=0.5)
    ap.add_argument("--trials", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--json", default="benchmarks/tvm-sharing.json")
    args = ap.parse_args()
    console = Console(width=160)
    bundled = real_model(args.model)
    original = ir.load(str(bundled.path()))
    samples, calib = bundled.samples(), bundled.calibration_samples(32)
    target = targets.resolve("cpu")
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="onebyone-sharing-") as tmp:
        models = {"original": original}
        variants = (("own ranks", False, 0.0), ("shared, <= 5% slower (default)", True, 0.05),
                    ("shared, <= 50% slower", True, 0.5))
        for label, share, tolerance in variants:
            latency = LatencyModel(runtime=TvmRuntime(target), cache_dir=f"{tmp}/latency", share_kernels=share,
                                   share_tolerance=tolerance)
            t0 = time.perf_counter()
            models[label], report = optimize(original, RankPolicy("budget", time=args.time), bundled.input_shapes,
                                             samples=samples, samples_label="real", raise_on_failure=False,
                                             calibration=calib, latency=latency)
            rows[label] = {"rewritten": report.totals.rewritten, "mac_ratio": report.totals.mac_ratio,
                           "optimize_seconds": time.perf_counter() - t0,
                           "ranks": {l.name: l.rank for l in report.layers if l.action == "rewritten"},
                           "worst_rel_l2": max(o["worst_rel_l2"] for o in report.verification["outputs"]),
                           "task": tasks.outcome(bundled.task, samples, run_samples(original, samples, "original"),
                                                 run_samples(models[label], samples, label))}
            console.print(f"{label}: {report.totals.rewritten} rewritten, {kernel_shapes(models[label])} conv kernels")
        packages = {}
        for label, model in models.items():
            db = f"{tmp}/db-{len(packages)}"
            if label != "original":  # the rewritten model starts from the original's records
                shutil.copytree(f"{tmp}/db-0", db)
            t0 = time.perf_counter()
            path = package.compile_model(model, target, f"{tmp}/pkg-{len(packages)}", bundled.input_shapes,
                                         tune_trials=args.trials, tuning_db=db)
            packages[label] = package.load_package(path)
            rows.setdefault(label, {}).update(tuning=packages[label].manifest.get("tuning"),
                                              tuning_seconds=time.perf_counter() - t0,
                                              conv_kernels=kernel_shapes(model))
            console.print(f"tuned {label} in {time.perf_counter() - t0:.0f} s")
        feed = samples[0]
        times = {label: [] for label in packages}
        for _ in range(args.repeats):
            for label, pkg in packages.items():
                times[label].append(pkg.time(feed, number=1, repeat=1)["median_ms"])
    base = statistics.median(times["original"])
    table = Table(title=f"{args.model}: data-aware {args.time} of TVM-measured time, each tuned with {args.trials} "
                        "trials (rewritten from the original's database), timed alternating")
    for col in ("model", "rewritten", "conv kernels", "kernels tuned / with records", "FLOPs covered", "tuned ms",
                "speedup", "output error", "task unchanged"):
        table.add_column(col)
    for label, row in rows.items():
        row["tuned_ms"] = statistics.median(times[label])
        row["speedup"] = base / row["tuned_ms"]
        cov = (row["tuning"] or {}).get("coverage") or {}
        table.add_row(label, str(row.get("rewritten", "-")), str(row["conv_kernels"]),
                      f"{(row['tuning'] or {}).get('tuned_kernels', '-')} / {cov.get('kernels_with_records', '-')} of "
                      f"{cov.get('kernels', '-')}", f"{cov.get('flops_covered', 0):.2f}", f"{row['tuned_ms']:.1f}",
                      f"{row['speedup']:.2f}x", f"{row.get('worst_rel_l2', 0):.2g}",
                      "-" if "task" not in row else ("yes" if row["task"]["unchanged"] else "NO"))
    console.print(table)
    write_json_atomic(args.json, {"model": args.model, "time": args.time, "trials": args.trials,
                                  "repeats": args.repeats, "rows": rows})
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
