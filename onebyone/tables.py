"""Rich tables of a report and a verification, for the terminal."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from onebyone.calibrated.holdout import CONFIDENCE, RESAMPLES
from onebyone.passes import initializer_inputs
from onebyone.report import METHOD_CHECK_FIELDS, Report

WEIGHT_SOURCES = {"initializer": "init", "Constant node": "const", "initializer through Identity": "init (Identity)",
                  "Constant node through Identity": "const (Identity)"}  # the table's short names


def short_name(name: str, width: int = 34) -> str:
    """`name`, or its head and tail around an ellipsis when longer than `width`."""
    return name if len(name) <= width else name[: width // 2 - 1] + "…" + name[-(width // 2) :]


def _macs(n: int) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def layer_table(report: Report, planned: bool = False) -> Table:
    """One row per Conv: geometry, rank vs break-even, MACs before -> after, and the action with its reason
    (`planned`: what `inspect` would do, worded as such)."""
    data = report.method == "data"
    t = Table(title=f"{report.model} — policy: {report.policy} — method: {report.method}", show_lines=False, header_style="bold")
    cols = ["conv", "kernel", "C→N /g", "stride", "in→out", "weight", "rank / b.e.", "MACs"]
    cols += ["err pred / meas", "fit"] if data else []
    for col in cols + ["action", "reason"]:
        t.add_column(col, no_wrap=col != "reason", overflow="fold")
    for l in report.layers:
        spatial = (
            f"{l.rows} rows" if l.rows is not None
            else f"{'x'.join(map(str, l.input_shape[2:]))}→{'x'.join(map(str, l.output_shape[2:]))}"
            if l.input_shape and l.output_shape
            else "?"
        )
        form = {"output": " out", "spatial": " sp", "tucker2": " t2"}.get(l.form, "")  # the rank's form, when not the input side
        if l.ranks:  # Tucker-2: its two ranks behind the rank knob
            form += f" ({l.ranks[0]},{l.ranks[1]})"
        rank = f"{l.rank if l.rank is not None else '-'}{form} / {l.break_even_rank:.1f}"
        macs = _macs(l.macs_before) if l.action == "skipped" else f"{_macs(l.macs_before)}→{_macs(l.macs_after)}"
        style = "green" if l.action == "rewritten" else "dim"
        action = ("lossless" if l.lossless else "rewritten") if l.action == "rewritten" else "skipped"
        if planned:
            action = {"skipped": "would skip", "rewritten": "would rewrite"}.get(action, f"would rewrite ({action})")
        t.add_row(
            short_name(l.name),
            "x".join(map(str, l.kernel)) if l.op == "Conv" else l.op,
            f"{l.in_channels}→{l.out_channels}" + (f" /{l.groups}" if l.groups > 1 else ""),
            "x".join(map(str, l.strides)),
            spatial,
            WEIGHT_SOURCES.get(l.weight_source, l.weight_source),
            rank,
            macs,
            *([_errs(l), l.fit or "-"] if data else []),
            f"[{style}]{action}[/]",
            l.reason,
        )
    return t


def _errs(l) -> str:
    if l.predicted_error is None:
        return "-"
    return f"{l.predicted_error:.3f} / " + ("-" if l.measured_error is None else f"{l.measured_error:.3f}")


def timing_line(t: dict[str, Any]) -> str:
    """The end-to-end timing of --cost time: measured, predicted and ceiling speedups on the runtime."""
    rt = t["runtime"]
    target = rt.get("target")
    built = f"for {target.get('mcpu') or target.get('mtriple') or target['kind']} " if target else ""
    line = (f"measured on {rt['name']} {rt['version']} {built}({rt['device']}, threads {rt['threads'] or 'auto'}): "
            f"{t['time_before_ms']:.3f} → {t['time_after_ms']:.3f} ms end to end"
            + (f" (from {t['baseline']})" if t.get("baseline") else "") + f", speedup {t['speedup']:.3f}x "
            + (f"(95% interval {1 / t['ratio_interval'][1]:.3f}–{1 / t['ratio_interval'][0]:.3f}x over {t['rounds']} "
               "paired rounds)" if t.get("ratio_interval") else f"(noise ±{100 * t['noise']:.1f}%)")
            + f", predicted {t['predicted_speedup'] or float('nan'):.3f}x, ceiling "
            + (f"{t['ceiling_speedup']:.2f}x" if t["ceiling_speedup"] else "-"))
    if t["backed_off"]:
        line += f"; backed off {len(t['backed_off'])} conv(s) that did not pay end to end"
    return line


def int8_line(q: dict[str, Any]) -> str:
    """The INT8 step of --int8, with the error INT8 alone brings (the original quantized the same way)."""
    alone = [o for o in q["alone"]["outputs"] if o.get("agreement") is None]
    decisions = [o["agreement"] for o in q["alone"]["outputs"] if o.get("agreement") is not None]
    worst = max((o["worst_rel_l2"] for o in alone), default=0.0)
    cos = min((o["cosine"] for o in alone if o["cosine"] is not None), default=1.0)
    error = (f"worst rel L2 {worst:.3g}, cosine {cos:.6f}" if alone else "") + (
        f"{', ' if alone else ''}{min(decisions):.4f} of the decisions agree" if decisions else "")
    return (f"INT8 ({q['format']}, {q['activations']} activations, {q['weights']} weights, ranges from "
            f"{q['calibration_samples']} calibration samples); INT8 alone vs the original: {error}"
            + ("" if "alone_speedup" not in q else f"; INT8 alone runs {q['alone_speedup']:.2f}x the float original"
               + ("" if q["alone_faster"] else " (NOT faster: on this runtime quantizing does not pay, deploy float)")))


def totals_line(report: Report, planned: bool = False) -> str:
    t = report.totals
    line = (
        f"{t.rewritten} of {t.convs} convs {'would be rewritten' if planned else 'rewritten'} ({t.lossless} lossless); "
        f"conv MACs {_macs(t.macs_before)} → "
        f"{_macs(t.macs_after)} ({t.mac_ratio:.3f}x); params {t.params_before:,} → {t.params_after:,}"
    )
    if t.quantized:
        line += (f"\nnote: {t.quantized} quantized conv(s) (QLinearConv/ConvInteger) are not rewritten: factor the "
                 "float model, then quantize it (--int8 does both, with calibration data)")
    if t.runtime_fused:
        line += (f"\nnote: {t.runtime_fused} conv(s) are onnxruntime's own fused or NCHWc operators (a model saved "
                 "after onnxruntime's graph optimizations) and are not rewritten: give onebyone the model from before "
                 "them (onnxruntime redoes them when it loads the written model)")
    overridable = sum(initializer_inputs.OPTION in (layer.reason or "") for layer in report.layers)
    if overridable:
        line += (f"\nnote: {overridable} conv(s) read weights that are graph inputs with default initializers "
                 f"(overridable at run time): {initializer_inputs.OPTION} makes them constants")
    c = report.method_check
    if c:
        other = "".join(f", {k} {v:.4g}" for k, v in c.items()
                        if k not in ("data", "weight", *METHOD_CHECK_FIELDS))
        line += (f"\n{c.get('measure', 'model-output relative error')} on {c['samples']} held-out calibration "
                 f"samples: data-aware {c['data']:.4g}, weight-only {c['weight']:.4g}{other} at the same budget → "
                 f"kept {c['kept']}")
        wins = c.get("confidence", {})
        if wins:
            line += (f" (share of {RESAMPLES} resamples of them in which it beat weight-only: "
                     + ", ".join(f"{k} {v:.0%}" for k, v in wins.items()) + f"; kept over it from {CONFIDENCE:.0%})")
    return line


def verification_table(v: dict[str, Any]) -> Table:
    """One row per output (and one per part of an output that splits): max-abs, worst relative L2, cosine, the
    elementwise check (when the tolerances have rtol), top-1/top-5 agreement (for integer and boolean outputs, the
    share of equal elements, with no relative error or cosine)."""
    t = Table(header_style="bold")
    elementwise = v["tolerances"].get("rtol") is not None
    cols = ["output", "shape", "max-abs", "rel L2 (worst)", "cosine"] + (["|Δ|/(atol+rtol·|ref|)"] if elementwise else [])
    for col in cols + ["top-1", "top-5"]:
        t.add_column(col)
    fmt = lambda x, f: "-" if x is None else format(x, f)  # noqa: E731
    for o in v["outputs"]:
        rows = [(short_name(o["name"], 28), "x".join(map(str, o["shape"])), o)]
        rows += [("  " + short_name(p["name"][len(o["name"]):], 26), "", p) for p in o.get("parts") or []]
        for label, shape, m in rows:
            agree = m.get("agreement")  # integer/boolean outputs: the share of equal elements, in the top-1 column
            rel = f"{m['worst_rel_l2']:.3g}" if agree is None else "-"
            cells = [escape(label), shape, f"{m['max_abs']:.3g}", rel, fmt(m["cosine"], ".6f")]
            if elementwise:
                cells.append(fmt(m.get("allclose"), ".3g"))
            cells += [fmt(m.get("top1") if agree is None else agree, ".3f"), fmt(m.get("top5"), ".3f")]
            t.add_row(*cells)
    return t


def verification_line(v: dict[str, Any]) -> str:
    from onebyone.verify.tolerances import Tolerances

    return (f"verification: {v['candidate']} vs {v['reference']} on {v['samples']} {v['inputs']} input(s); tolerances: "
            + Tolerances.from_dict(v["tolerances"]).describe()
            + (f" (working precision {v['precision']})" if v.get("precision", "float32") != "float32" else ""))


def print_verification(console: Console, v: dict[str, Any]) -> None:
    console.print(verification_line(v), soft_wrap=True)
    console.print(verification_table(v))
    for note in v.get("notes") or []:
        console.print(f"note: {note}", soft_wrap=True, markup=False)
    if str(v.get("inputs", "")).startswith(("held-out calibration", "calibration (")):
        console.print("note: verified on calibration samples (no --inputs or --images given), on which the rewrite "
                      "may have been chosen: give inputs the fit never saw for an independent verdict",
                      soft_wrap=True, markup=False)
    if v["passed"]:
        console.print("[bold green]PASS[/]: every output is within tolerance")
    else:
        console.print("[bold red]FAIL[/]: " + escape("; ".join(v["failures"])), soft_wrap=True)
