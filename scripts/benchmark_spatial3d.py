#!/usr/bin/env python
"""The spatial form on 3D convs ((1+2)D: kd x 1 x 1 then 1 x kh x kw), measured with onnxruntime.

A small video network (five 3x3x3 convs on an 8x56x56 RGB clip, then a classifier) whose 3D convs after the stem
have weights exactly low-rank in the spatial form's unfolding [C·kd, N·kh·kw] at `--rank` of C (the stem's 3 input
channels stay full rank), optimized with `--policy exact` twice: with the input form alone and with every form. Per
variant: the convs rewritten and their forms, the MAC ratio, onnxruntime's time with 1 thread (original and optimized
alternating in one process, medians) and the worst relative L2 error against the original on random clips. Printed
as a table; written as JSON.

    python scripts/benchmark_spatial3d.py [--rank 0.5] [--repeats 20] [--out benchmarks]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

CLIP = (8, 56, 56)  # frames, height, width
LAYERS = [(3, 32, (1, 2, 2)), (32, 64, (2, 2, 2)), (64, 64, (1, 1, 1)), (64, 128, (2, 2, 2)), (128, 128, (1, 1, 1))]


def video_model(rank: float, seed: int = 0) -> onnx.ModelProto:
    """The network: 3x3x3 convs (pads 1, strides per LAYERS) with ReLU, global average pool, a Gemm to 10 classes."""
    from onebyone.models.weights import low_rank_spatial_weight, random_weight

    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "input"
    for i, (c, n, stride) in enumerate(LAYERS):
        if i == 0:
            w = random_weight(n, c, (3, 3, 3), rng)
        else:
            w = low_rank_spatial_weight(n, c, (3, 3, 3), 1, max(1, round(rank * c)), rng)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(
            (0.1 * rng.standard_normal(n)).astype(np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}", kernel_shape=[3, 3, 3],
                                   pads=[1] * 6, strides=list(stride)),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        x = f"r{i}"
    classes = 10
    inits += [numpy_helper.from_array(rng.standard_normal((classes, LAYERS[-1][1])).astype(np.float32) * 0.1, "fc"),
              numpy_helper.from_array(np.zeros(classes, np.float32), "fcb")]
    nodes += [helper.make_node("GlobalAveragePool", [x], ["pool"]), helper.make_node("Flatten", ["pool"], ["flat"]),
              helper.make_node("Gemm", ["flat", "fc", "fcb"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "video3d", [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT,
                                                                              [1, 3, *CLIP])],
                              [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, classes])], inits)
    return helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)])


def _times(sessions: dict, feed: dict, repeats: int) -> dict[str, float]:
    """Median seconds per run of each onnxruntime session, the sessions alternating in every round."""
    for s in sessions.values():
        s.run(None, feed)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(repeats):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, feed)
            times[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rank", type=float, default=0.5, help="spatial-form rank of the convs after the stem, of C")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", default="benchmarks")
    args = ap.parse_args()
    import onnx_ir as ir
    from rich.console import Console
    from rich.table import Table

    from onebyone import RankPolicy, optimize
    from onebyone.passes.analysis import FORMS
    from onebyone.report import write_json_atomic
    from onebyone.verify.metrics import rel_l2

    console = Console(width=160)
    original = video_model(args.rank)
    shapes = {"input": (1, 3, *CLIP)}
    variants = {"input form": ("input",), "all forms": FORMS}
    models, rows = {"original": original}, []
    for label, forms in variants.items():
        optimized, report = optimize(ir.serde.deserialize_model(original), RankPolicy("exact"), shapes, verify=False,
                                     forms=forms)
        models[label] = ir.serde.serialize_model(optimized)
        rows.append(dict(variant=label, forms=list(forms), rewritten=report.totals.rewritten,
                         layers=[dict(name=l.name, form=l.form, rank=l.rank, action=l.action, lossless=l.lossless,
                                      macs_before=l.macs_before, macs_after=l.macs_after) for l in report.layers],
                         mac_ratio=report.totals.macs_after / report.totals.macs_before))
    rng = np.random.default_rng(1)
    clips = [{"input": rng.standard_normal((1, 3, *CLIP)).astype(np.float32)} for _ in range(4)]
    from onebyone.verify.onnxruntime_run import session

    sessions = {k: session(m, k, threads=1) for k, m in models.items()}
    outputs = {k: [s.run(None, c)[0] for c in clips] for k, s in sessions.items()}
    times = _times(sessions, clips[0], args.repeats)
    table = Table(title=f"3D convs exactly rank {args.rank} of C in the spatial unfolding, --policy exact, "
                        f"onnxruntime 1 thread, medians of {args.repeats} alternating runs")
    for col in ("variant", "rewritten (forms)", "MAC ratio", "ORT ms orig -> opt", "speedup", "max rel error"):
        table.add_column(col)
    for row in rows:
        label = row["variant"]
        row["ort_ms"] = (times["original"] * 1e3, times[label] * 1e3)
        row["speedup"] = times["original"] / times[label]
        row["max_rel_error"] = max(rel_l2(a, b) for a, b in zip(outputs["original"], outputs[label]))
        forms = ", ".join(sorted({f"{l['form']}" for l in row["layers"] if l["action"] == "rewritten"})) or "-"
        table.add_row(label, f"{row['rewritten']}/{len(row['layers'])} ({forms})", f"{row['mac_ratio']:.3f}",
                      f"{row['ort_ms'][0]:.1f} -> {row['ort_ms'][1]:.1f}", f"{row['speedup']:.2f}x",
                      f"{row['max_rel_error']:.1e}")
    console.print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "spatial3d.json", {"rank": args.rank, "clip": CLIP, "rows": rows})
    console.print(f"wrote {out / 'spatial3d.json'}")


if __name__ == "__main__":
    main()
