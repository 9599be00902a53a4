#!/usr/bin/env python
"""What open_nsfw's task verdict sees: probability and logit changes on confident and on borderline inputs.

Every evaluation photo of open_nsfw is a confident "safe" (top-1 log-odds margin >= 5), where a class probability hides
large moves of the logits. This script rewrites the model at a few MAC budgets (input form alone, and with the
pointwise form), data-aware and weight-only, and reports the classifier outcome (onebyone.models.tasks: largest
probability change, top-1 agreement, logits' relative error, and their margins' (what onebyone's gains and checks
compare: the top classes' logits, each row centred), largest log-odds change, the inputs' smallest margin) on
the evaluation photos and on the held-out calibration crops (calibrated.holdout), whose margins go down to about 1.
The held-out crops are calibration data: the data-aware fit chose among its candidates on them, so its numbers there
lean optimistic; weight-only never saw them.

    python scripts/benchmark_classifier_margin.py [--samples 32] [--json benchmarks/classifier-margin.json]
"""

from __future__ import annotations

import argparse
import json

import onnx_ir as ir
from rich.console import Console
from rich.table import Table

from onebyone import RankPolicy
from onebyone.calibrated import search
from onebyone.calibrated.holdout import held_out
from onebyone.calibrated.source import DataSource
from onebyone.models import tasks
from onebyone.models.real import REAL_MODELS
from onebyone.verify.onnxruntime_run import run_samples

CASES = ((0.9, ("input",)), (0.67, ("input",)), (0.7, ("input", "pointwise")), (0.6, ("input", "pointwise")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=32, help="calibration samples")
    parser.add_argument("--json", default="benchmarks/classifier-margin.json")
    args = parser.parse_args()
    real = REAL_MODELS["opennsfw"]
    original = ir.load(str(real.path()))
    calibration = real.calibration_samples(args.samples)
    sets = {"evaluation": real.samples(), "held-out calibration": held_out(calibration)}
    refs = {k: run_samples(original, v, "original") for k, v in sets.items()}
    source = DataSource(calibration)
    rows = []
    for fraction, forms in CASES:
        for method, src in (("data", source), ("weight", None)):
            model, report = search.rewrite(original, real.name, RankPolicy("budget", macs=fraction), real.input_shapes,
                                           src, forms=forms)
            for label, inputs in sets.items():
                got = run_samples(model, inputs, "optimized")
                rows.append(dict(macs=fraction, forms=list(forms), method=method, inputs=label,
                                 mac_ratio=report.totals.mac_ratio,
                                 **tasks.outcome(real.task, inputs, refs[label], got, (original, model))))
    table = Table(title=f"open_nsfw: what the classifier's verdict sees ({args.samples} calibration samples)")
    for col in ("MAC budget", "forms", "factors", "inputs", "min margin", "max Δp", "top-1", "logits rel. error",
                "margins rel. error", "max Δ log-odds", "verdict"):
        table.add_column(col)
    for r in rows:
        table.add_row(f"{r['macs']} ({r['mac_ratio']:.2f})", "+".join(r["forms"]), r["method"], r["inputs"],
                      f"{r['min_margin']:.2f}", f"{r['max_prob_change']:.4f}", f"{r['top1']:.3f}",
                      f"{r['logit_rel_error']:.3f}", f"{r['margin_rel_error']:.3f}", f"{r['max_logodds_change']:.2f}",
                      "unchanged" if r["unchanged"] else "changed")
    Console().print(table)
    with open(args.json, "w") as f:
        json.dump({"samples": args.samples, "rows": rows}, f, indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
