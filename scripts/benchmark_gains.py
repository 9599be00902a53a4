#!/usr/bin/env python
"""Output gains to first order against the exact probes: the same convs, probe ranks and samples, both ways.

For each model (the bundled ones and the generated ResNet-50-shaped model), the data-aware budget run (`--macs
0.67`, calibration samples as `benchmark_calibration.py`) is started and, where it asks for the output gains, they
are measured both ways (sensitivity.measured_gains with EXACT and FIRST_ORDER) before the run goes on with the way
the tool chooses. Per model: the probes, each way's seconds, which way the tool takes, and the ratio first-order /
exact per probe (median, 10-90%, min-max); a model whose ops first order cannot differentiate says why. Printed as a
table; written as JSON and a plot (first-order against exact gain, per probe).

    python scripts/benchmark_gains.py [--models opennsfw ppocr-det basic-pitch resnet50] [--samples 32]
                                      [--out benchmarks]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnx_ir as ir

from onebyone.calibrated import sensitivity
from onebyone.calibrated.gradients import Unsupported
from onebyone.calibrated.search import rewrite
from onebyone.calibrated.source import DataSource
from onebyone.errors import OneByOneError
from onebyone.passes.policies import RankPolicy


class _Recording(DataSource):
    """A data source that measures the output gains both ways when the pass first asks for them (kept in
    `record`), then answers as the tool does."""

    def __init__(self, samples: list[dict]) -> None:
        super().__init__(samples)
        self.record: dict = {}

    def gains(self, model, decisions, round_to, progress=None):
        if not self.record:
            self.record.update(_both_ways(model, decisions, self.samples, round_to))
        return super().gains(model, decisions, round_to, progress)


def _both_ways(model, decisions, samples, round_to) -> dict:
    row: dict = {}
    for key, method in (("exact", sensitivity.EXACT), ("first_order", sensitivity.FIRST_ORDER)):
        t0 = time.perf_counter()
        try:
            got, _ = sensitivity.measured_gains(model, decisions, samples, round_to, method=method)
        except (Unsupported, OneByOneError) as exc:
            if method != sensitivity.FIRST_ORDER:
                raise
            row[f"{key}_error"] = " ".join(str(exc).split())[:200]  # why first order cannot be taken: a result
            continue
        row[f"{key}_s"] = time.perf_counter() - t0
        row[key] = {name: [list(map(int, rs)), list(map(float, gs))] for name, (rs, gs) in got.items()}
    return row


def _ratios(row: dict) -> list[tuple[float, float]]:
    """(exact gain, first-order gain) per probe measured both ways."""
    pairs = []
    for name, (ranks, gains) in row.get("exact", {}).items():
        first = dict(zip(*row.get("first_order", {}).get(name, [[], []])))
        pairs += [(g, first[r]) for r, g in zip(ranks, gains) if r in first]
    return pairs


def one(name: str, count: int) -> dict:
    if name == "resnet50":
        from onebyone.models import generators

        original = ir.serde.deserialize_model(generators.resnet_bottleneck(blocks=(3, 4, 6, 3), seed=0))
        rng = np.random.default_rng(1)
        calib = [{"input": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)} for _ in range(count)]
        shapes = {"input": (1, 3, 224, 224)}
    else:
        from onebyone.models.real import REAL_MODELS

        real = REAL_MODELS[name]
        original = ir.load(str(real.path()))
        calib = real.calibration_samples(count)
        shapes = real.input_shapes
    source = _Recording(calib)
    rewrite(original, name, RankPolicy("budget", macs=0.67), shapes, source)
    took = (source.describe() or {}).get("gains_method", "")
    row = {"model": name, "samples": count, **source.record,
           "tool_takes": "first order" if took == sensitivity.FIRST_ORDER else "exact"}
    pairs = _ratios(row)
    row["probes"] = len(pairs)
    if pairs:
        r = np.array([f / e for e, f in pairs])
        row["ratio"] = {"median": float(np.median(r)), "p10": float(np.percentile(r, 10)),
                        "p90": float(np.percentile(r, 90)), "min": float(r.min()), "max": float(r.max())}
    return row


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    from onebyone.report import write_json_atomic

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["opennsfw", "ppocr-det", "basic-pitch", "resnet50"])
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--out", default="benchmarks")
    args = ap.parse_args()
    console = Console(width=200)
    rows = []
    for name in args.models:
        rows.append(one(name, args.samples))
        console.print(f"{name}: done", style="dim")
    table = Table(title="output gains, first order / exact probes (same convs, probe ranks and samples)")
    for col in ("model", "probes", "exact s", "first-order s", "tool takes", "median", "10-90%", "min-max"):
        table.add_column(col)
    for r in rows:
        q = r.get("ratio")
        table.add_row(r["model"], str(r["probes"]), f"{r['exact_s']:.1f}" if "exact_s" in r else "-",
                      f"{r['first_order_s']:.1f}" if "first_order_s" in r else r.get("first_order_error", "-")[:60],
                      r.get("tool_takes", "-"), f"{q['median']:.2f}" if q else "-",
                      f"{q['p10']:.2f}-{q['p90']:.2f}" if q else "-", f"{q['min']:.2f}-{q['max']:.2f}" if q else "-")
    console.print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "gains-first-order.json", {"samples": args.samples, "rows": rows})
    _plot(rows, out / "gains-first-order.png")
    console.print(f"wrote {out / 'gains-first-order.json'} and {out / 'gains-first-order.png'}")


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4.5))
    for r in rows:
        pairs = _ratios(r)
        if pairs:
            ax.scatter([e for e, _ in pairs], [f for _, f in pairs], s=12, label=r["model"])
    lims = ax.get_xlim()[0], ax.get_xlim()[1]
    ax.plot(lims, lims, color="grey", lw=1, ls="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("gain, exact probes")
    ax.set_ylabel("gain, first order")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
