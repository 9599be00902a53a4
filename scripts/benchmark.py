#!/usr/bin/env python
"""Benchmark: per model and policy, MACs and params before/after, pass time, and onnxruntime latency of the
original vs the optimized model measured side by side (interleaved runs, medians), with the speedup next to the
MAC ratio. Prints a table and writes JSON.

    python scripts/benchmark.py [--repeats 30] [--threads 1 [2 ...]] [--json benchmark.json] [--models opennsfw ...] [--policies exact ...] [--no-tvm]
                                (policies ending in /time choose ranks by time measured on onnxruntime with --threads,
                                 /tvmtime by time measured on TVM for --target;
                                 with /pw/ 1x1 convs are factored too: --forms input,pointwise; with /out/ the
                                 output form too: --forms input,output; /sp/: and the spatial form,
                                 --forms input,output,spatial; /all/: every form;
                                 `int8`: onnxruntime static INT8 alone; /int8/: onebyone then INT8, --int8)
                                [--target cpu|cuda:arch=sm_90]
                                [--tune-trials N] [--calibration-samples 32]

Latency ratios are what to quote: both models run in the same process, alternating, on the same input. With TVM
(default), both models are also compiled for --target (default: the host CPU; `cuda:arch=sm_90` on a GPU machine),
untuned (TVM's default pipeline) and, with --tune-trials N, each tuned with the same N MetaSchedule trials, and timed
with time_evaluator in the same run.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import statistics
import tempfile
import time

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
from rich.console import Console
from rich.table import Table

from onebyone import RankPolicy, optimize
from onebyone.int8 import quantize
from onebyone.latency import LatencyModel
from onebyone.latency.timer import timed_session
from onebyone.models import generators
from onebyone.models.real import REAL_MODELS
from onebyone.report import write_json_atomic
from onebyone.models import tasks
from onebyone.verify.onnxruntime_run import run_samples
from onebyone.runtime.tuning import resolve_cost_model

POLICIES = {
    "exact": RankPolicy("exact"),
    "energy0.9/8": RankPolicy("energy", energy=0.9, round_to=8),
    "budget0.67/data": RankPolicy("budget", macs=0.67),  # data-aware, bundled calibration set (real models only)
    "budget0.67/data/8": RankPolicy("budget", macs=0.67, round_to=8),  # the same, ranks multiples of 8
    "budget0.5/data": RankPolicy("budget", macs=0.5),
    # --cost time: ranks from a latency model measured on onnxruntime with --threads, never slower end to end
    "budget0.67/data/time": RankPolicy("budget", time=0.67),  # 0.67 of the targeted convs' measured time
    "budget0.6/data/time": RankPolicy("budget", time=0.6),
    "budget0.5/data/time": RankPolicy("budget", time=0.5),
    "budget0.4/data/time": RankPolicy("budget", time=0.4),
    "energy0.9/time": RankPolicy("energy", energy=0.9),  # energy 0.9, every rewrite checked by time
    # /pw/: the pointwise form too (1x1 convs factored as well; --forms input,pointwise)
    "budget0.8/data/pw/time": RankPolicy("budget", time=0.8),
    "budget0.75/data/pw/time": RankPolicy("budget", time=0.75),
    "budget0.7/data/pw/time": RankPolicy("budget", time=0.7),
    "budget0.65/data/pw/time": RankPolicy("budget", time=0.65),
    "budget0.6/data/pw/time": RankPolicy("budget", time=0.6),
    "budget0.5/data/pw/time": RankPolicy("budget", time=0.5),
    "budget0.4/data/pw/time": RankPolicy("budget", time=0.4),
    # /out/: the output form too (kxk then 1x1, chosen per conv where its predicted error is lower; --forms
    # input,output)
    "budget0.67/data/pw": RankPolicy("budget", macs=0.67),  # with 1x1 convs, Gemm and MatMul layers (ppocr-rec)
    "budget0.5/data/pw": RankPolicy("budget", macs=0.5),
    "budget0.67/data/out": RankPolicy("budget", macs=0.67),
    "budget0.5/data/out": RankPolicy("budget", macs=0.5),
    "budget0.67/data/out/time": RankPolicy("budget", time=0.67),
    "budget0.5/data/out/time": RankPolicy("budget", time=0.5),
    "error0.03/data/out/time": RankPolicy("error", max_error=0.03),
    # /sp/: the spatial form too (kh x 1 then 1 x kw; --forms input,output,spatial); /all/: every form
    "budget0.67/data/sp": RankPolicy("budget", macs=0.67),
    "budget0.5/data/sp/time": RankPolicy("budget", time=0.5),
    "error0.03/data/sp/time": RankPolicy("error", max_error=0.03),
    "error0.02/data/sp/time": RankPolicy("error", max_error=0.02),
    "error0.03/data/all/time": RankPolicy("error", max_error=0.03),
    "budget0.65/data/all/time": RankPolicy("budget", time=0.65),
    # /t2/: the Tucker-2 form too (1x1, kxk, 1x1; --forms input,tucker2)
    "budget0.67/data/t2": RankPolicy("budget", macs=0.67),
    "budget0.5/data/t2/time": RankPolicy("budget", time=0.5),
    "error0.03/data/t2/time": RankPolicy("error", max_error=0.03),
    # equal output error: the smallest budget (of MACs, or of measured time) whose calibration output error <= 0.03
    "error0.03/data": RankPolicy("error", max_error=0.03),
    "error0.03/data/time": RankPolicy("error", max_error=0.03),
    # ranks by time measured on TVM (--runtime tvm: the target's default code, identical convs sharing kernel shapes)
    "error0.03/data/tvmtime": RankPolicy("error", max_error=0.03),
    "error0.02/data/time": RankPolicy("error", max_error=0.02),
    "error0.02/data/pw/time": RankPolicy("error", max_error=0.02),
    "error0.03/data/pw/time": RankPolicy("error", max_error=0.03),
    # INT8: onnxruntime static quantization (onebyone.int8) alone, and onebyone then INT8 (--int8: convs timed as INT8,
    # never slower than INT8 alone); speedups against the float original and against INT8 alone, in one run
    "int8": None,
    "budget0.9/data/int8/time": RankPolicy("budget", time=0.9),
    "budget0.8/data/int8/time": RankPolicy("budget", time=0.8),
    "budget0.7/data/int8/time": RankPolicy("budget", time=0.7),
    # the error search on the quantized rewrite (--policy error --int8): the composition is held to the target
    "error0.01/data/int8/time": RankPolicy("error", max_error=0.01),
    "error0.005/data/int8/time": RankPolicy("error", max_error=0.005),
}


def latency_model(policy_name: str, threads: int, int8: bool, target: str) -> LatencyModel | None:
    """The latency model of a benchmark policy: onnxruntime with `threads` for /time, TVM on `target` for /tvmtime
    (its default code), none for MAC-cost policies."""
    if policy_name.endswith("/tvmtime"):
        from onebyone.latency.tvm_runtime import TvmRuntime
        from onebyone.runtime import targets

        return LatencyModel(runtime=TvmRuntime(targets.resolve(target)))
    return LatencyModel(threads=threads, int8=int8) if policy_name.endswith("/time") else None


def forms_of(policy_name: str) -> tuple[str, ...]:
    """The forms a benchmark policy uses (see POLICIES): its tag anywhere in the name, the last part included."""
    policy_name += "/"
    for tag, forms in (("/pw/", ("input", "pointwise")), ("/out/", ("input", "output")),
                       ("/sp/", ("input", "output", "spatial")), ("/all/", ("input", "output", "spatial", "pointwise")),
                       ("/t2/", ("input", "tucker2"))):
        if tag in policy_name:
            return forms
    return ("input",)


def unchanged_report(original, shapes, samples, quantized):
    """The report of a model left as it is (its verification against itself is not needed: INT8 alone is verified
    against the original by the caller), for the INT8-alone row."""
    from onebyone.api import verify
    from onebyone.verify import tolerances as tol

    _, report = optimize(original, RankPolicy("budget", macs=1.0), shapes, verify=False)
    report.method = "int8 alone"
    report.verification = verify(original, quantized, samples, tol.APPROXIMATE,
                                 samples_label="real" if samples else "random").to_dict()
    return report


def cases(names: list[str] | None):
    """(label, model path or ir.Model, input shapes, samples or None, calibration maker or None, task or None) for real
    and generated models."""
    for name, m in REAL_MODELS.items():
        if names and name not in names:
            continue
        yield name, str(m.path()), m.input_shapes, m.samples(), m.calibration_samples, m.task
    for name in ("resnet", "vgg", "inception"):
        label = f"{name}-lowrank (generated)"
        if names and name not in names:
            continue
        proto = generators.GENERATORS[name](size=112, low_rank=0.5, seed=0)
        yield label, ir.serde.deserialize_model(proto), {"input": (1, 3, 112, 112)}, None, _random_calibration, None


def _random_calibration(count: int) -> list[dict]:
    """Seeded standard-normal inputs: the calibration of the generated models (they have no real data)."""
    rng = np.random.default_rng(7)
    return [{"input": rng.standard_normal((1, 3, 112, 112)).astype(np.float32)} for _ in range(count)]


def task_outcome(task: str | None, original, optimized, samples) -> dict | None:
    """The task outcome (onebyone.models.tasks) of optimized against original on the evaluation samples."""
    if task is None:
        return None
    ref, got = run_samples(original, samples, "original"), run_samples(optimized, samples, "optimized")
    return tasks.outcome(task, samples, ref, got, (original, optimized))


def make_session(model, threads: int) -> ort.InferenceSession:
    return timed_session(model, threads, "benchmark")


def side_by_side(*sessions_and_rest) -> list[float]:
    """side_by_side(sess_a, sess_b, ..., feed, repeats): median seconds per run of each session, alternating them on
    the same input after warm-up."""
    *sessions, feed, repeats = sessions_and_rest
    for _ in range(3):
        for s in sessions:
            s.run(None, feed)
    times = [[] for _ in sessions]
    for _ in range(repeats):
        for s, t in zip(sessions, times):
            t0 = time.perf_counter()
            s.run(None, feed)
            t.append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


class TvmColumns:
    """TVM times of one model's original against each of its optimized versions, compiled for `target` (run on this
    machine: its CPU or its GPU), untuned (TVM's default pipeline) and, with `trials`, tuned with that MetaSchedule
    trial budget. The original is compiled and tuned once per model; each optimized model is tuned with the same
    budget starting from a copy of the original's database (as `onebyone compile --tuning-db` does), so its budget
    goes to its new kernels. That gives the rewritten model twice the trials on the kernels it shares with the
    original, so the original is also re-tuned once the same way (from a copy of its database, the same budget: the
    control, "the original given the same extra trials"); the tuned speedup is quoted against both. The original,
    the control and each optimized model are timed alternately in this process."""

    def __init__(self, original, shapes, target: str, trials: int, workdir: str):
        from onebyone.runtime import targets

        self.original, self.shapes, self.trials, self.workdir = original, shapes, trials, workdir
        self.target = targets.resolve(target)
        self.number = 20 if targets.device_kind(self.target) == "cuda" else 1
        self._originals: dict[bool, object] = {}
        self._control = None
        self._count = 0

    def _package(self, model, name: str, tuned: bool, db: str | None):
        from onebyone.runtime import package

        return package.load_package(package.compile_model(model, self.target, f"{self.workdir}/{name}", self.shapes,
                                                          tune_trials=self.trials if tuned else 0, tuning_db=db))

    def _original(self, tuned: bool):
        if tuned not in self._originals:
            self._originals[tuned] = self._package(self.original, f"original-{int(tuned)}", tuned,
                                                   f"{self.workdir}/db-original" if tuned else None)
        return self._originals[tuned]

    def _from_original_db(self, model, name: str):
        """`model` tuned with the trial budget starting from a copy of the original's database."""
        self._count += 1
        db = f"{self.workdir}/db-{self._count}"
        shutil.copytree(f"{self.workdir}/db-original", db)
        return self._package(model, f"{name}-{self._count}", True, db)

    def times(self, optimized, feed, tuned: bool, repeat: int = 3) -> tuple[float, float, list, float | None]:
        """Median ms of the original and of `optimized`, timed alternately (tuned: with the control too); third: the
        packages' manifest `tuning` entries (original, optimized, control; None untuned); fourth: the control's
        median ms (None untuned)."""
        a = self._original(tuned)
        if tuned:  # the rewritten model starts from the original's records; so does the control, once per model
            self._control = self._control or self._from_original_db(self.original, "control")
            b = self._from_original_db(optimized, "optimized")
        else:
            self._count += 1
            b = self._package(optimized, f"optimized-{self._count}-0", False, None)
        packages = [a, b] + ([self._control] if tuned else [])
        times = [[] for _ in packages]
        for _ in range(repeat):
            for p, t in zip(packages, times):
                t.append(p.time(feed, number=self.number, repeat=1)["median_ms"])
        medians = [statistics.median(t) for t in times]
        return medians[0], medians[1], [p.manifest.get("tuning") for p in packages], (medians[2] if tuned else None)


def plot(rows: list[dict], path: str) -> None:
    """Measured onnxruntime speedup against worst output error, one panel per model: MAC-cost policies as circles,
    measured-time policies as triangles (hollow where the task outcome changed), the ceiling (every targeted conv at
    zero time) as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models), 3.8), squeeze=False)
    for ax, model in zip(axes[0], models):
        for r in (r for r in rows if r["model"] == model):
            timed = r["policy"].endswith("time")
            color = "tab:orange" if timed else "tab:blue"
            kept = r.get("task") is None or r["task"]["unchanged"]
            ax.scatter(max(r["worst_rel_l2"], 1e-7), r["speedup"], marker="^" if timed else "o",
                       color=color if kept else "none", edgecolors=color)
            ax.annotate(f"{r['policy']} ({r.get('threads', 1)}t)", (max(r["worst_rel_l2"], 1e-7), r["speedup"]), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
            if r.get("ceiling_speedup") and not r["policy"].endswith("/tvmtime"):  # a TVM row's ceiling is TVM's
                ax.axhline(r["ceiling_speedup"], color="gray", linestyle="--", linewidth=0.8)
        ax.axhline(1.0, color="black", linewidth=0.6)
        ax.set_xscale("log")
        ax.set(title=model, xlabel="worst output relative error", ylabel="speedup (onnxruntime, measured)")
    fig.suptitle("circles: cost MACs; triangles: cost measured time; hollow: task outcome changed; dashed: ceiling")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, nargs="+", default=[1],
                    help="onnxruntime threads; several values: every row is measured with each, in the same run")
    ap.add_argument("--json", default="benchmark.json")
    ap.add_argument("--models", nargs="*", help="subset: opennsfw ppocr-det basic-pitch resnet vgg inception")
    ap.add_argument("--no-tvm", action="store_true", help="skip the TVM columns")
    ap.add_argument("--target", default="cpu", help="TVM target of the TVM columns (e.g. cuda:arch=sm_90 on a GPU machine)")
    ap.add_argument("--policies", nargs="*", choices=list(POLICIES), help="subset of the policies (default: all)")
    ap.add_argument("--tune-trials", type=int, default=0, help="also tune original and optimized with this many trials each")
    ap.add_argument("--plot", help="also draw speedup against output error (PNG)")
    ap.add_argument("--calibration-samples", type=int, default=32,
                    help="calibration samples of the data-aware and INT8 rows (real models: crops of other photos)")
    args = ap.parse_args()
    console = Console(width=200)
    rows = []
    for label, model, shapes, samples, calib, task in cases(args.models):
        original = model if isinstance(model, ir.Model) else ir.load(model)
        workdir = tempfile.TemporaryDirectory()
        tvm_columns = TvmColumns(original, shapes, args.target, args.tune_trials, workdir.name)
        # TVM columns per optimized model (MAC rows repeat across thread counts); each entry holds its model, so that
        # its id is not reused by another while the model's rows are measured
        measured_tvm: dict[int, tuple] = {}
        int8_alone = None
        counted: dict[str, tuple] = {}  # MAC-cost results do not depend on the thread count: rewritten once
        for (pname, policy), threads in itertools.product(POLICIES.items(), args.threads):
            needs_data = "/data" in pname or "int8" in pname
            if (args.policies and pname not in args.policies) or (needs_data and calib is None):
                continue
            int8 = "int8" in pname
            if int8 and int8_alone is None:
                int8_alone = quantize(original, calib(args.calibration_samples))
            latency = latency_model(pname, threads, int8, args.target)
            if latency is not None and latency.runtime["name"] == "tvm" and threads != args.threads[0]:
                continue  # TVM timings do not depend on onnxruntime's threads: one row
            t0 = time.perf_counter()
            if policy is None:  # INT8 alone
                optimized, report = int8_alone, unchanged_report(original, shapes, samples, int8_alone)
            elif latency is None and pname in counted:
                optimized, report = counted[pname]
            else:
                optimized, report = optimize(original, policy, shapes, samples=samples,
                                             samples_label="real" if samples else "random", raise_on_failure=False,
                                             calibration=calib(args.calibration_samples) if needs_data else None,
                                             latency=latency,
                                             forms=forms_of(pname),
                                             int8=int8)
                if latency is None:
                    counted[pname] = optimized, report
            pass_s = time.perf_counter() - t0
            feed = samples[0] if samples else {k: np.random.default_rng(0).standard_normal(v).astype(np.float32) for k, v in shapes.items()}
            sessions = [make_session(m, threads) for m in [original, optimized] + ([int8_alone] if int8 else [])]
            t_orig, t_opt, *t_int8 = side_by_side(*sessions, feed, args.repeats)
            tvm_orig = tvm_opt = tuned_orig = tuned_opt = tuned_control = tuning_info = tuning_s = None
            if not args.no_tvm and not int8 and (threads == args.threads[0] or id(optimized) in measured_tvm):
                # INT8 rows: onnxruntime's QDQ kernels only; TVM uses every core: measured on the first thread count's
                # rows (and on the others' when their model is the same one)
                if id(optimized) not in measured_tvm:
                    untuned = tvm_columns.times(optimized, feed, tuned=False)
                    t1 = time.perf_counter()
                    tuned = (tvm_columns.times(optimized, feed, tuned=True) if args.tune_trials
                             else (None, None, None, None))
                    measured_tvm[id(optimized)] = optimized, untuned, tuned, time.perf_counter() - t1
                (_, (tvm_orig, tvm_opt, _, _), (tuned_orig, tuned_opt, tuning_info, tuned_control),
                 tuning_s) = measured_tvm[id(optimized)]
            t = report.totals
            v = report.verification
            rows.append(dict(
                model=label, policy=pname, threads=threads, convs=t.convs, rewritten=t.rewritten, lossless=t.lossless,
                macs_before=t.macs_before, macs_after=t.macs_after, mac_ratio=t.mac_ratio,
                params_before=t.params_before, params_after=t.params_after, pass_seconds=pass_s,
                ort_ms_original=t_orig * 1e3, ort_ms_optimized=t_opt * 1e3, speedup=t_orig / t_opt,
                ort_ms_int8_alone=t_int8[0] * 1e3 if t_int8 else None,
                speedup_vs_int8_alone=t_int8[0] / t_opt if t_int8 else None,
                tvm_ms_original=tvm_orig, tvm_ms_optimized=tvm_opt,
                tvm_speedup=(tvm_orig / tvm_opt) if tvm_opt else None,
                tune_trials=args.tune_trials, tvm_tuned_ms_original=tuned_orig, tvm_tuned_ms_optimized=tuned_opt,
                tuning_cost_model=resolve_cost_model("auto") if args.tune_trials else None,
                tuning_original=tuning_info and tuning_info[0], tuning_optimized=tuning_info and tuning_info[1],
                tuning_seconds=tuning_s if args.tune_trials else None,
                tvm_tuned_speedup=(tuned_orig / tuned_opt) if tuned_opt else None,
                tvm_tuned_ms_control=tuned_control, tuning_control=tuning_info and tuning_info[2],
                tvm_tuned_speedup_vs_control=(tuned_control / tuned_opt) if tuned_opt else None,
                predicted_speedup=report.timing and report.timing["predicted_speedup"],
                ceiling_speedup=report.timing and report.timing["ceiling_speedup"],
                task=task_outcome(task, original, optimized, samples),
                method=report.method, method_check=report.method_check,
                verified=v["passed"], worst_rel_l2=max(o["worst_rel_l2"] for o in v["outputs"]),
                min_cosine=min((o["cosine"] for o in v["outputs"] if o["cosine"] is not None), default=1.0),
            ))
            console.print(f"{label} / {pname}: done", style="dim")
            # written after every row, so a long (tuned) run that is stopped keeps what it measured
            write_json_atomic(args.json, {"threads": args.threads, "repeats": args.repeats, "tvm_target": args.target,
                                          "tune_trials": args.tune_trials, "rows": rows})
        workdir.cleanup()
    table = Table(title=f"onebyone benchmark (onnxruntime CPU, {args.threads} thread(s), median of {args.repeats} alternating runs; "
                        f"TVM target {args.target})")
    for col in ("model", "policy", "threads", "rewritten", "conv MACs", "MAC ratio", "params", "pass s", "ORT ms orig → opt", "speedup", "vs INT8 alone", "predicted / ceiling", "TVM ms orig → opt", "TVM speedup", "tuned TVM ms", "tuned speedup (vs re-tuned original)", "verified", "worst rel / cos", "task unchanged"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["model"], r["policy"], str(r["threads"]), f"{r['rewritten']}/{r['convs']} ({r['lossless']} lossless)",
            f"{r['macs_before'] / 1e6:.1f}M → {r['macs_after'] / 1e6:.1f}M", f"{r['mac_ratio']:.3f}",
            f"{r['params_before'] / 1e6:.2f}M → {r['params_after'] / 1e6:.2f}M", f"{r['pass_seconds']:.2f}",
            f"{r['ort_ms_original']:.2f} → {r['ort_ms_optimized']:.2f}", f"{r['speedup']:.2f}x",
            "-" if r["speedup_vs_int8_alone"] is None else f"{r['speedup_vs_int8_alone']:.2f}x",
            "-" if not r.get("predicted_speedup") else f"{r['predicted_speedup']:.2f}x / {r['ceiling_speedup'] or float('inf'):.2f}x",
            "-" if r["tvm_ms_original"] is None else f"{r['tvm_ms_original']:.1f} → {r['tvm_ms_optimized']:.1f}",
            "-" if r["tvm_speedup"] is None else f"{r['tvm_speedup']:.2f}x",
            "-" if r["tvm_tuned_ms_original"] is None else f"{r['tvm_tuned_ms_original']:.1f} → {r['tvm_tuned_ms_optimized']:.1f}",
            "-" if r["tvm_tuned_speedup"] is None else f"{r['tvm_tuned_speedup']:.2f}x (re-tuned original: "
                                                       f"{r['tvm_tuned_speedup_vs_control']:.2f}x)",
            "yes" if r["verified"] else "NO", f"{r['worst_rel_l2']:.2g} / {r['min_cosine']:.5f}",
            "-" if r["task"] is None else ("yes" if r["task"]["unchanged"] else "NO") + f" ({tasks.summary(r['task'])})",
        )
    console.print(table)
    kinds = {"MACs": lambda p: not p.endswith("time") and p != "int8", "measured time": lambda p: p.endswith("/time")
             and "int8" not in p, "TVM-measured time": lambda p: p.endswith("/tvmtime"), "INT8 alone": lambda p: p == "int8", "onebyone then INT8": lambda p: "/int8/" in p}
    for model, threads in itertools.product(dict.fromkeys(r["model"] for r in rows), args.threads):
        for kind, member in kinds.items():
            kept = [r for r in rows if r["model"] == model and r["threads"] == threads and member(r["policy"])
                    and (r["task"]["unchanged"] if r["task"] is not None else r["verified"])]
            if kept:
                best = max(kept, key=lambda r: r["speedup"])
                console.print(f"{model}, {threads} thread(s): fastest with the task unchanged, {kind}: {best['speedup']:.2f}x "
                              f"({best['policy']}, error {best['worst_rel_l2']:.2g})")
    for model in dict.fromkeys(r["model"] for r in rows):
        tuned = [r for r in rows if r["model"] == model and r["tvm_tuned_speedup"]
                 and (r["task"]["unchanged"] if r["task"] is not None else r["verified"])]
        if tuned:
            best = max(tuned, key=lambda r: r["tvm_tuned_speedup_vs_control"])
            console.print(f"{model}, TVM tuned ({args.tune_trials} trials each): fastest with the task unchanged "
                          f"{best['tvm_tuned_speedup_vs_control']:.2f}x against the original re-tuned with the same "
                          f"extra trials ({best['tvm_tuned_speedup']:.2f}x against the original tuned once; "
                          f"{best['policy']})")
    console.print(f"wrote {args.json}")
    if args.plot:
        plot(rows, args.plot)
        console.print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
