#!/usr/bin/env python
"""How long the data-aware method takes against plain inference, per model and calibration sample count.

For each model (the bundled ones and a generated ResNet-50-shaped model, 53 convs at 224x224, plus the same with
twice the depth) and each sample count, one child process loads the model, times plain onnxruntime inference over
the calibration samples, runs the data-aware budget (`--macs 0.67`, no cache), times inference again (the ratio is to
the mean of the two: this machine's speed drifts by tens of percent within minutes) and reports the run's seconds,
its peak memory (the child's max RSS) and the output error on the evaluation inputs (bundled models). The depth
ratio (resnet50x2 / resnet50, smallest sample count) comes from `--depth-pairs` alternated pairs of runs, per pair
and pooled, beside the same ratio of plain inference. Printed as a table; written as JSON and a plot (seconds
against samples, and the ratio to inference).

    python scripts/benchmark_calibration.py [--samples 32 128 512] [--models opennsfw ppocr-det basic-pitch
                                             resnet50 resnet50x2] [--depth-pairs 2] [--out benchmarks]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

GENERATED = {"resnet50": (3, 4, 6, 3), "resnet50x2": (6, 8, 12, 6)}


def _inference_seconds(model, samples: list[dict]) -> float:
    """Seconds plain onnxruntime takes over `samples`, one run each, after a warm-up run."""
    from onebyone.verify.onnxruntime_run import Probe

    probe = Probe(model, label="original")
    probe.run(samples[0])
    t0 = time.perf_counter()
    for feed in samples:
        probe.run(feed)
    return time.perf_counter() - t0


def one(name: str, count: int, fraction: float) -> dict:
    """Measure one (model, sample count) in this process; the result as a dict."""
    import onnx_ir as ir

    from onebyone import RankPolicy, optimize

    if name in GENERATED:
        from onebyone.models import generators

        original = ir.serde.deserialize_model(generators.resnet_bottleneck(blocks=GENERATED[name], seed=0))
        rng = np.random.default_rng(1)
        calib = [{"input": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)} for _ in range(count)]
        shapes, real = {"input": (1, 3, 224, 224)}, None
    else:
        from onebyone.models.real import REAL_MODELS

        real = REAL_MODELS[name]
        original = ir.load(str(real.path()))
        calib = real.calibration_samples(count)
        shapes = real.input_shapes
    convs = sum(n.op_type == "Conv" for n in original.graph)
    before = _inference_seconds(original, calib)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    optimized, report = optimize(original, RankPolicy("budget", macs=fraction), shapes, verify=False, calibration=calib)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    after = _inference_seconds(original, calib)
    inference = (before + after) / 2  # the machine's speed drifts: inference timed on both sides of the run
    row = dict(model=name, samples=count, convs=convs, rewritten=report.totals.rewritten, inference_s=inference,
               inference_before_s=before, inference_after_s=after, data_aware_s=seconds, ratio=seconds / inference,
               peak_rss_mb=peak, rss_before_mb=rss_before / 2**20, kept=report.method)
    if real is not None:
        from onebyone.models import tasks
        from onebyone.verify.metrics import worst_part_rel_l2
        from onebyone.verify.onnxruntime_run import run_samples
        from onebyone.verify.parts import output_splits

        evaluation = real.samples()
        ref, got = run_samples(original, evaluation, "original"), run_samples(optimized, evaluation, "optimized")
        row["output_rel_error"] = worst_part_rel_l2(ref, got, output_splits(original))
        row["task"] = tasks.outcome(real.task, evaluation, ref, got, (original, optimized))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, nargs="*", default=[32, 128, 512])
    ap.add_argument("--models", nargs="*", default=["opennsfw", "ppocr-det", "basic-pitch", "resnet50", "resnet50x2"])
    ap.add_argument("--fraction", type=float, default=0.67)
    ap.add_argument("--out", default="benchmarks")
    ap.add_argument("--depth-pairs", type=int, default=2,
                    help="resnet50/resnet50x2 runs at the smallest sample count, alternated, for the depth ratio")
    ap.add_argument("--one", nargs=2, metavar=("MODEL", "SAMPLES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.fraction), default=str))
        return
    from rich.console import Console
    from rich.table import Table

    from onebyone.report import write_json_atomic

    console = Console(width=200)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, pairs = [], []
    depth = "resnet50" in args.models and "resnet50x2" in args.models
    for name in args.models:
        counts = args.samples if name != "resnet50x2" else []  # resnet50x2: in the depth pairs below
        for count in counts:
            row = _child(console, name, count, args.fraction)
            if row is not None:
                rows.append(row)
                if depth and name == "resnet50" and count == args.samples[0]:
                    pairs.append([row])
    for k in range(args.depth_pairs if depth and pairs else 0):  # alternated: the machine's speed drifts
        base = pairs[-1][0] if k == 0 else _child(console, "resnet50", args.samples[0], args.fraction)
        deep = _child(console, "resnet50x2", args.samples[0], args.fraction)
        if base is None or deep is None:
            continue
        if k == 0:
            rows.append(deep)
            pairs[-1].append(deep)
        else:
            pairs.append([base, deep])
    table = Table(title=f"data-aware budget {args.fraction} (no cache) vs plain onnxruntime inference, same samples")
    for col in ("model", "convs", "samples", "inference s", "data-aware s", "ratio", "peak MB", "error", "task"):
        table.add_column(col)
    for r in rows:
        task = r.get("task")
        table.add_row(r["model"], str(r["convs"]), str(r["samples"]), f"{r['inference_s']:.2f}", f"{r['data_aware_s']:.1f}",
                      f"{r['ratio']:.1f}x", f"{r['peak_rss_mb']:.0f}",
                      f"{r['output_rel_error']:.4f}" if "output_rel_error" in r else "",
                      ("unchanged" if task.get("unchanged") else "changed") if isinstance(task, dict) else "")
    console.print(table)
    scaling = _depth_scaling([p for p in pairs if len(p) == 2])
    if scaling:
        console.print(f"depth x2 (resnet50 -> resnet50x2, {scaling['samples']} samples, {len(scaling['pairs'])} "
                      f"alternated pairs): {scaling['ratio']:.2f}x the time (pairs: "
                      f"{', '.join(f'{p:.2f}x' for p in scaling['pairs'])}; inference {scaling['inference_ratio']:.2f}x)")
    write_json_atomic(out / "calibration-speed.json", {"fraction": args.fraction, "rows": rows, "depth_scaling": scaling})
    _plot(rows, out / "calibration-speed.png")
    console.print(f"wrote {out / 'calibration-speed.json'} and {out / 'calibration-speed.png'}")


def _child(console, name: str, count: int, fraction: float) -> dict | None:
    """One (model, sample count) measured in a child process (its own peak memory); None when it failed."""
    done = subprocess.run([sys.executable, __file__, "--one", name, str(count), "--fraction", str(fraction)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        console.print(f"{name} x{count}: failed\n{done.stderr[-2000:]}", style="red")
        return None
    row = json.loads(done.stdout.strip().splitlines()[-1])
    console.print(f"{name} x{count}: {row['data_aware_s']:.1f} s ({row['ratio']:.1f}x inference), "
                  f"peak {row['peak_rss_mb']:.0f} MB", style="dim")
    return row


def _depth_scaling(pairs: list[list[dict]]) -> dict | None:
    """The time ratio resnet50x2 / resnet50 over alternated (resnet50, resnet50x2) runs: per pair and pooled (sum
    over sum), with the same for plain inference (how far the machine's speed moved it)."""
    if not pairs:
        return None
    t = lambda key, i: sum(p[i][key] for p in pairs)  # noqa: E731
    return {"samples": pairs[0][0]["samples"], "pairs": [p[1]["data_aware_s"] / p[0]["data_aware_s"] for p in pairs],
            "seconds": [[p[0]["data_aware_s"], p[1]["data_aware_s"]] for p in pairs],
            "ratio": t("data_aware_s", 1) / t("data_aware_s", 0),
            "inference_ratio": t("inference_s", 1) / t("inference_s", 0)}


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name in dict.fromkeys(r["model"] for r in rows):
        pts = sorted((r["samples"], r["data_aware_s"], r["ratio"]) for r in rows if r["model"] == name)
        ax1.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=name)
        ax2.plot([p[0] for p in pts], [p[2] for p in pts], "o-", label=name)
    ax1.set_xscale("log", base=2)
    ax1.set_yscale("log")
    ax1.set_xlabel("calibration samples")
    ax1.set_ylabel("data-aware budget run, s")
    ax2.set_xscale("log", base=2)
    ax2.axhline(5, color="grey", ls="--", lw=1, label="5x inference")
    ax2.set_xlabel("calibration samples")
    ax2.set_ylabel("time / plain inference")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
