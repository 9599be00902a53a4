"""Model-level decisions made by measuring the whole model on calibration data: whether the data-aware rewrite beats
weight-only SVD at the same budget, and the smallest MAC budget that meets an output-error target."""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from onebyone.calibrated.holdout import CONFIDENCE, held_out, win_share
from onebyone.calibrated.source import DataSource
from onebyone.passes.analysis import DEFAULT_FORMS, OUTPUT_SIDE
from onebyone.passes.bottleneck_pass import BottleneckPass
from onebyone.passes.policies import Policy, RankPolicy
from onebyone.report import Report
from onebyone.verify.decisions import measured_outputs
from onebyone.verify.logits import TOP_CLASSES, softmax_input, top_margins_sums, values
from onebyone.verify.metrics import part_sums, whole_error, worst_part_rel_l2
from onebyone.verify.onnxruntime_run import Probe, measure_shapes, run_samples
from onebyone.verify.parts import output_splits


def rewrite(original: ir.Model, name: str, policy: Policy, input_shapes, source=None, progress=None,
            **pass_options) -> tuple[ir.Model, Report]:
    """A rewritten copy of `original` (never changed) and its report, factors from `source` (default weight-only);
    `pass_options` go to BottleneckPass (latency, keep)."""
    optimized = original.clone()
    p = BottleneckPass(policy, input_shapes, model_name=name, source=source, measure_shapes=measure_shapes,
                       progress=progress, **pass_options)
    p(optimized)
    return optimized, p.report


class Reference:
    """The original model's outputs on the calibration samples (all of them, or only the held-out ones, each run once
    when first asked for; the held-out ones taken from `source`'s moments pass when it ran one on these samples), and
    the split of its outputs into parts."""

    def __init__(self, original: ir.Model, samples: list[dict], source: DataSource | None = None) -> None:
        self.original = original
        self.names = measured_outputs(original)  # the outputs, an ArgMax's (or other decision's) scores in its place
        self.samples = samples
        self.source = source
        self.splits = output_splits(original)
        self.held_samples = held_out(samples)
        self._outputs: dict | None = None
        self._held_outputs: dict | None = None
        self.softmax = softmax_input(original)
        self._held_logits: list | None = None

    @property
    def outputs(self) -> dict:
        if self._outputs is None:
            self._outputs = self._run(self.original, self.samples, "original")
        return self._outputs

    def _run(self, model: ir.Model, samples: list[dict], label: str) -> dict:
        """`model`'s measured values (verify.decisions.measured_outputs: found in each model by the same rule, as a
        quantized model may have renamed them) on `samples`, keyed by the original's names."""
        theirs = measured_outputs(model)
        theirs = theirs if len(theirs) == len(self.names) else self.names
        got = run_samples(Probe(model, theirs, label, only=True), samples)
        return {mine: got[t] for mine, t in zip(self.names, theirs)}

    def _from_moments_pass(self) -> dict:
        """What the source's moments pass kept on the held-out samples (empty unless it ran on these samples)."""
        return self.source.held_outputs if self.source is not None and self.source.samples is self.samples else {}

    @property
    def held_outputs(self) -> dict:
        if self._held_outputs is None:
            shared = self._from_moments_pass()
            if self._outputs is not None:
                self._held_outputs = {k: held_out(v) for k, v in self._outputs.items()}
            elif shared:  # the moments pass also kept the logits behind a Softmax output (check_error reads them)
                self._held_outputs = {n: shared[n] for n in self.names}
            else:
                self._held_outputs = self._run(self.original, self.held_samples, "original")
        return self._held_outputs

    def error(self, model: ir.Model) -> float:
        """The worst output part's relative error of `model` on all calibration samples."""
        return worst_part_rel_l2(self.outputs, self._run(model, self.samples, "rewritten"), self.splits)

    @property
    def check_measure(self) -> str:
        """What check_error measures, in words (the report's method_check says it)."""
        if self.softmax is None:
            return "model-output relative error"
        return f"relative error of {self.softmax.name}'s margins among each row's top {TOP_CLASSES} classes"

    def check_error(self, model: ir.Model) -> float:
        """The held-out error the model-level check compares rewrites by: the worst output part's relative error,
        except behind a Softmax output, where it is that of the logits' margins among each row's top classes
        (verify.logits.top_margins_rel_l2), as for the output gains: on confident samples the probabilities hide
        how far a rewrite moved the decision (open_nsfw: held-out probabilities kept weight-only SVD at --macs
        0.6-0.7, whose margins moved 1.8-2.7x as far as the data-aware rewrite's on held-out crops, 1.2-1.5x on
        evaluation photos)."""
        return whole_error(self.check_sums(model))

    def check_sums(self, model: ir.Model) -> list:
        """What check_error measures, as per-sample sums (verify.metrics.part_sums) over the held-out samples."""
        if self.softmax is None:
            return part_sums(self.held_outputs, self._run(model, self.held_samples, "rewritten"), self.splits)
        if self._held_logits is None:
            self._held_logits = (self._from_moments_pass().get(self.softmax.name)
                                 or values(self.original, self.softmax.name, self.held_samples, "original (logits)"))
        theirs = softmax_input(model)
        got = values(model, theirs.name if theirs else self.softmax.name, self.held_samples, "rewritten (logits)")
        return top_margins_sums(self._held_logits, got, self.softmax)


def checked_budget(original, name, policy, input_shapes, source: DataSource, reference: Reference,
                   progress=None, **pass_options) -> tuple[ir.Model, Report]:
    """The data-aware rewrite under a budget, kept only when its model-output error on the held-out calibration
    samples (Reference.check_error) is below that of weight-only SVD under the same budget in at least CONFIDENCE of
    their resamples (_kept) and, when it used the output, spatial, tucker2 or pointwise form, at most that of the
    data-aware rewrites with fewer forms at the same cost (_narrower, equal_cost: the form choice per conv and the
    budget read predicted errors; this checks the model); else the best of those. The report's `method_check` holds
    every error, what was kept, what was measured and each data-aware rewrite's share of wins (`confidence`)."""
    data_model, data_report = rewrite(original, name, policy, input_shapes, source, progress, **pass_options)
    if not data_report.totals.rewritten:
        return data_model, data_report
    tried = [("data", data_model, data_report),
             ("weight", *rewrite(original, name, policy, input_shapes, **pass_options))]
    for label, forms in _narrower(tuple(pass_options.get("forms", DEFAULT_FORMS)), data_report):
        narrower = equal_cost(policy, data_report, forms)
        if narrower is not None:
            tried.append((label, *rewrite(original, name, narrower, input_shapes, source, progress,
                                          **{**pass_options, "forms": forms})))
    sums = [reference.check_sums(m) for _, m, _ in tried]
    errors = [whole_error(s) for s in sums]
    best, confidence = _kept([lab for lab, _, _ in tried], sums, errors)
    label, model, report = tried[best]
    report.method_check = {**{lab: e for (lab, _, _), e in zip(tried, errors)}, "kept": label,
                           "samples": len(reference.held_samples), "measure": reference.check_measure,
                           "confidence": confidence}
    report.calibration = data_report.calibration
    return model, report


def _kept(labels: list[str], sums: list, errors: list[float]) -> tuple[int, dict[str, float]]:
    """Which candidate the model-level check keeps: the lowest held-out error among weight-only SVD and the
    data-aware candidates that beat it in at least CONFIDENCE of the resamples of the held-out samples (holdout:
    a win within their noise goes to weight-only SVD); and each data-aware candidate's share of wins."""
    weight = labels.index("weight")
    confidence = {lab: win_share(s, sums[weight]) for i, (lab, s) in enumerate(zip(labels, sums)) if i != weight}
    eligible = [i for i, lab in enumerate(labels) if i == weight or confidence[lab] >= CONFIDENCE]
    return min(eligible, key=lambda i: (errors[i], i)), confidence


INPUT_SIDE = "data without the output form"  # method_check's labels of the data-aware rewrites with fewer forms
INPUT_ONLY = "data, input form only"
INPUT_SIDE_ONLY = "data, input and pointwise forms only"


def equal_cost(policy: Policy, report: Report, forms: tuple[str, ...]) -> Policy | None:
    """The policy for a rewrite with `forms` that spends what `policy` spent in `report`'s rewrite: the same policy,
    unless the pointwise form is dropped from a budget whose rewrite targeted pointwise layers; those then stay whole
    and the budget's fraction of the remaining targeted convs is lowered to keep the same total cost (MACs, or measured
    time); None when the remaining convs cannot reach it (the rewrite without the pointwise form cannot cost as
    little)."""
    targeted = [l for l in report.layers if l.numerical_rank is not None]
    if "pointwise" in forms or policy.kind != "budget" or not any(l.form == "pointwise" for l in targeted):
        return policy
    timed = policy.time is not None
    total = sum(_cost(l, timed) for l in targeted)
    rest = total - sum(_cost(l, timed) for l in targeted if l.form == "pointwise")
    fraction = 1 - (1 - (policy.time if timed else policy.macs)) * total / rest if rest > 0 else 0.0
    if fraction <= 0:
        return None
    return dataclasses.replace(policy, **{"time" if timed else "macs": min(fraction, 1.0)})


def _cost(layer, timed: bool, after: bool = False) -> float:
    """A report layer's cost before (or `after`) the rewrite: measured ms with a latency model, else MACs."""
    if timed:
        return (layer.time_after_ms if after else layer.time_before_ms) or 0.0
    return layer.macs_after if after else layer.macs_before


def _without(forms: list[str]) -> str:
    """The label of the data-aware rewrite without `forms` (INPUT_SIDE for the output form alone)."""
    return "data without the " + " and ".join(forms) + (" form" if len(forms) == 1 else " forms")


def _narrower(forms: tuple[str, ...], report: Report) -> list[tuple[str, tuple[str, ...]]]:
    """The data-aware rewrites with fewer forms that a budget's rewrite with `forms` is checked against: without the
    output-side forms (output, tucker2) when the rewrite used one; with the input-side forms only (input, pointwise)
    when it used the spatial form too (or an output-side form and no other); with the input form alone when it used
    the pointwise form (at the same total cost: see equal_cost); none when it used none of these."""
    used = {l.form for l in report.layers if l.action == "rewritten"}
    base = tuple(f for f in forms if f in ("input", "pointwise"))
    no_output_side = tuple(f for f in forms if f not in OUTPUT_SIDE)
    out_used = [f for f in OUTPUT_SIDE if f in used]
    out = []
    if out_used and no_output_side != base:
        out.append((_without(out_used), no_output_side))
    if used - {"input", "pointwise"} and base:
        out.append((_without(out_used) if out_used and not out else INPUT_ONLY if base == ("input",)
                    else INPUT_SIDE_ONLY, base))
    if "pointwise" in used and "input" in forms and ("input",) not in [f for _, f in out]:
        out.append((INPUT_ONLY, ("input",)))
    return out


GRID = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)  # budgets scanned by the error policy, largest first
GIVE_UP = 2.0  # the scan stops after two budgets in a row whose error exceeds the target this many times


def smallest_budget(original, name, policy: Policy, input_shapes, source: DataSource, progress=None,
                    steps: int = 3, reference: Reference | None = None, finish=None,
                    **pass_options) -> tuple[ir.Model, Report]:
    """_search over budgets with the given forms; when they include the pointwise form and its search ends on a
    rewrite without pointwise layers (the fewer-forms check preferred the input form at every budget it met the
    target), the search without the pointwise form too, and of the two results the one that saves more (MACs, or the
    predicted time with a latency model): that search's budgets are fractions of the kxk convs alone, a finer grid
    for them."""
    reference = reference or Reference(original, source.samples, source)
    found = _search(original, name, policy, input_shapes, source, progress, steps, reference, finish, **pass_options)
    forms = tuple(pass_options.get("forms", DEFAULT_FORMS))
    if "pointwise" not in forms or "input" not in forms or any(
            l.form == "pointwise" and l.action == "rewritten" for l in found[1].layers):
        return found
    other = _search(original, name, policy, input_shapes, source, progress, steps, reference, finish,
                    **{**pass_options, "forms": tuple(f for f in forms if f != "pointwise")})
    timed = pass_options.get("latency") is not None
    saved = lambda report: sum(_cost(l, timed) - _cost(l, timed, after=True) for l in report.layers)  # noqa: E731
    return other if saved(other[1]) > saved(found[1]) else found


def _search(original, name, policy: Policy, input_shapes, source: DataSource, progress=None,
            steps: int = 3, reference: Reference | None = None, finish=None,
            **pass_options) -> tuple[ir.Model, Report]:
    """The smallest budget fraction (of MACs, or of measured time with a latency model) whose calibration output
    error (worst output part) is at most policy.max_error, measured on the rewrite as `finish(rewrite)` deploys it
    (e.g. quantized; None: as it is); the model unchanged when no budget below 1 meets it. The error need not fall as
    the budget grows (the data-aware fit and the model-level check choose per budget: open_nsfw measured 0.026 at 0.6
    of time and 0.011 at 0.5), so the budgets of GRID are scanned (until, after one met the target, two in a row miss
    it by GIVE_UP times), then `steps` bisections refine between the smallest that met it (or 1, the model
    unchanged) and the next smaller one. Statistics and output gains are computed once (the source keeps them)."""
    reference = reference or Reference(original, source.samples, source)
    timed = pass_options.get("latency") is not None

    def attempt(frac: float):
        budget = RankPolicy("budget", **{"time" if timed else "macs": frac}, round_to=policy.round_to)
        candidate, report = checked_budget(original, name, budget, input_shapes, source, reference, progress,
                                           **pass_options)
        return candidate, report, frac, reference.error(finish(candidate) if finish else candidate)

    tried, best, misses = [], None, 0  # only the best candidate is held (each is a whole model)

    def keep(trial):
        nonlocal best
        tried.append(trial[2:])
        if trial[3] <= policy.max_error and (best is None or trial[2] < best[2]):
            best = trial

    for frac in GRID:
        keep(attempt(frac))
        misses = misses + 1 if best is not None and tried[-1][1] > GIVE_UP * policy.max_error else 0
        if misses == 2:
            break
    lo, hi = (best[2] - (GRID[0] - GRID[1]), best[2]) if best else (GRID[0], 1.0)  # 1.0: the model unchanged
    for _ in range(steps if lo > 1e-9 else 0):
        keep(attempt((lo + hi) / 2))
        lo, hi = (lo, tried[-1][0]) if tried[-1][1] <= policy.max_error else (tried[-1][0], hi)
    if best is None:
        candidate, report = rewrite(original, name, RankPolicy("budget", macs=1.0), input_shapes, source, progress,
                                    keep=pass_options.get("keep"), forms=pass_options.get("forms", DEFAULT_FORMS))
        best = (candidate, report, 1.0, 0.0)
    candidate, report, frac, err = best
    report.policy = (f"{policy.describe()} (found {'time' if timed else 'MAC'} budget {frac:.3f} of {len(tried)} "
                     f"tried, calibration output error {err:.3g})")
    return candidate, report
