#!/usr/bin/env python
"""Weight-only vs data-aware factorization on the bundled real models at fixed MAC budgets.

For each model and each fraction F of the targeted convs' MACs (0.9, 0.75, 0.67, 0.5), both methods run with
the `budget` policy; calibration inputs (crops/flips of other photos, other tones) are disjoint from the
evaluation inputs. Printed: output relative error and the task metric; written: JSON and one PNG per model
(error vs MACs).

    python scripts/benchmark_data_aware.py [--fractions 0.9 0.75 0.67 0.5] [--calibration-samples 32]
                                           [--models opennsfw ppocr-det basic-pitch] [--out benchmarks]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import onnx_ir as ir
from rich.console import Console
from rich.table import Table

from onebyone import RankPolicy, optimize
from onebyone.models import tasks
from onebyone.models.real import REAL_MODELS
from onebyone.report import write_json_atomic
from onebyone.verify.metrics import worst_part_rel_l2
from onebyone.verify.onnxruntime_run import run_samples
from onebyone.verify.parts import output_splits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fractions", type=float, nargs="*", default=[0.9, 0.75, 0.67, 0.5])
    ap.add_argument("--calibration-samples", type=int, default=32)
    ap.add_argument("--models", nargs="*", default=list(REAL_MODELS))
    ap.add_argument("--out", default="benchmarks")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    console = Console(width=200)
    rows = []
    for name in args.models:
        m = REAL_MODELS[name]
        original = ir.load(str(m.path()))
        evaluation = m.samples()
        calib = m.calibration_samples(args.calibration_samples)
        ref = run_samples(original, evaluation, "original")
        cache = tempfile.mkdtemp(prefix="onebyone-bench-")
        for fraction in args.fractions:
            for method, cal in (("weight", None), ("data", calib)):
                t0 = time.perf_counter()
                optimized, report = optimize(original, RankPolicy("budget", macs=fraction), m.input_shapes,
                                             verify=False, calibration=cal, cache_dir=cache)
                seconds = time.perf_counter() - t0
                got = run_samples(optimized, evaluation, "optimized")
                err = worst_part_rel_l2(ref, got, output_splits(original))
                targeted = [l for l in report.layers if l.action == "rewritten" or "budget" in l.reason]
                row = dict(model=name, fraction=fraction, method=method, seconds=seconds,
                           targeted_mac_ratio=sum(l.macs_after for l in targeted) / max(sum(l.macs_before for l in targeted), 1),
                           mac_ratio=report.totals.mac_ratio, rewritten=report.totals.rewritten, output_rel_error=err,
                           kept=report.method, method_check=report.method_check,
                           task=tasks.outcome(m.task, evaluation, ref, got, (original, optimized)))
                rows.append(row)
                console.print(f"{name} F={fraction} {method}: error {err:.4f} task {row['task']} ({seconds:.0f} s)", style="dim")
        _plot(name, [r for r in rows if r["model"] == name], out / f"error-vs-macs-{name}.png")
    table = Table(title="weight-only vs data-aware at equal MAC budgets (evaluation inputs disjoint from calibration)")
    for col in ("model", "MAC fraction", "weight: error", "data: error", "data vs weight", "weight: task", "data: task"):
        table.add_column(col)
    for name in args.models:
        for fraction in args.fractions:
            w = next(r for r in rows if r["model"] == name and r["fraction"] == fraction and r["method"] == "weight")
            d = next(r for r in rows if r["model"] == name and r["fraction"] == fraction and r["method"] == "data")
            change = (d["output_rel_error"] - w["output_rel_error"]) / max(w["output_rel_error"], 1e-12)
            kept = "" if d["kept"] == "data" else " (weight-only kept)"
            table.add_row(name, f"{fraction} ({d['targeted_mac_ratio']:.3f})", f"{w['output_rel_error']:.4f}",
                          f"{d['output_rel_error']:.4f}{kept}", f"{change:+.0%}", tasks.summary(w["task"]), tasks.summary(d["task"]))
    console.print(table)
    write_json_atomic(out / "data-aware.json", {"calibration_samples": args.calibration_samples, "rows": rows})
    console.print(f"wrote {out / 'data-aware.json'} and error-vs-macs-*.png")


def _plot(name: str, rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for method, style in (("weight", "o--"), ("data", "s-")):
        pts = sorted((r["targeted_mac_ratio"], r["output_rel_error"]) for r in rows if r["method"] == method)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=f"{method}-aware" if method == "data" else "weight-only SVD")
    ax.set_xlabel("fraction of targeted conv MACs kept")
    ax.set_ylabel("output relative L2 error (evaluation inputs)")
    ax.set_yscale("log")
    ax.set_title(name)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
