"""BottleneckPass: the onnx-ir pass that puts 1x1 bottlenecks in front of spatial convs.

Rules it applies, in order, to every Conv of the main graph:
1. Skip (with a stated reason) convs whose weight is not a float constant, 1x1 convs, depthwise convs, convs
   with unknown spatial sizes and convs for which no rank lowers MACs.
2. Read each candidate's spectrum from the factor source (the weight's, or whitened by calibration data), pick the
   per-group rank with the RankPolicy; skip when that rank is not strictly below break-even.
3. Replace W by B (1x1, grouped like the conv, no bias) then W' (original attributes and bias), with the source's
   factors, in graph order; then let the source settle (measure, undo what does not hold up).
The model's inputs, outputs and metadata are unchanged; the pass checks it (ensures) with the ONNX checker.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

from onebyone.modelio import check_opset, has_external_data
from onebyone.passes import forms as form_choice
from onebyone.passes import exclusion, initializer_inputs, plan, rewrite
from onebyone.passes.analysis import DEFAULT_FORMS, analyze, check_forms
from onebyone.passes.input_shapes import graph_inputs, resolve_input_shapes
from onebyone.passes.plan import Decision
from onebyone.passes.policies import Policy, RankPolicy
from onebyone.passes.sources import Applied, FactorSource, WeightSource
from onebyone.report import Report, Totals


def interface(model: ir.Model) -> tuple:
    """The model's interface: the names, shapes and dtypes of its real inputs (not initializers listed as inputs,
    which ConstantInitializersPass may make plain constants) and outputs, and the model metadata."""
    sig = lambda vs: tuple((v.name, str(v.shape), str(v.dtype)) for v in vs)  # noqa: E731
    return sig(graph_inputs(model)), sig(model.graph.outputs), tuple(sorted(model.metadata_props.items()))


def count_params(model: ir.Model) -> int:
    """Elements of all constant tensors of the main graph (initializers and Constant nodes)."""
    total = sum(int(np.prod(v.shape.dims)) for v in model.graph.initializers.values() if v.shape is not None)
    for node in model.graph:
        if node.op_type == "Constant" and node.outputs[0].shape is not None:
            total += int(np.prod(node.outputs[0].shape.dims))
        elif node.op_type == "Constant":
            t = ir.convenience.get_const_tensor(node.outputs[0])
            total += int(t.size) if t is not None else 0
    return total


class BottleneckPass(ir.passes.InPlacePass):
    """Insert 1x1 bottlenecks in front of spatial convs; after the call, `self.report` says what was done.

    Args:
        policy: how ranks are chosen (default: exact, i.e. lossless rewrites only).
        input_shapes: static shapes for inputs with dynamic dims (a dynamic batch dim counts as 1).
        model_name: the name used in the report.
        source: where spectra and factors come from (passes.sources.FactorSource): weight-only SVD by default, or
            onebyone.calibrated.DataSource(calibration samples) for the data-aware method.
        measure_shapes: measures the shapes that shape inference leaves unknown (e.g.
            onebyone.verify.onnxruntime_run.measure_shapes); without it such convs are skipped with a reason.
        latency: measures each candidate conv and its rewritten pairs on the target runtime (e.g.
            onebyone.latency.LatencyModel: measure, pair_time, runtime, shares_kernels, share_kernel_shapes);
            needed by policies that spend measured time (budget with `time`).
        keep: conv names to leave alone whatever the policy says, with the reason given (name -> reason).
        forms: the factorization forms to use (analysis.FORMS: "input", "output", "spatial" and "tucker2" for kxk
            convs, "pointwise" for 1x1 convs; a conv with several gets the one passes.forms.choose picks);
            convs of other forms are skipped with a reason.
        progress: called as progress(stage, done, total) during long work.
        exclude: glob patterns of conv names to leave alone before any budget is spent (passes.exclusion).
    """

    def __init__(
        self,
        policy: Policy | None = None,
        input_shapes: dict[str, tuple[int, ...]] | None = None,
        model_name: str = "model",
        source: FactorSource | None = None,
        measure_shapes=None,
        latency=None,
        keep: dict[str, str] | None = None,
        forms: tuple[str, ...] = DEFAULT_FORMS,
        progress=None,
        exclude: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.policy = policy or RankPolicy()
        self.input_shapes = dict(input_shapes or {})
        self.model_name = model_name
        self.source = source or WeightSource()
        self.measure_shapes = measure_shapes
        self.latency = latency
        self.keep = dict(keep or {})
        self.forms = check_forms(forms)
        self.progress = progress
        self.exclude = tuple(exclude)
        self.report: Report | None = None
        self.decisions: list[Decision] = []
        self._interface: tuple | None = None
        self._input_valid = False

    @property
    def method(self) -> str:
        return self.source.method

    def requires(self, model: ir.Model) -> None:
        opsets = model.opset_imports
        version = opsets.get("", opsets.get("ai.onnx"))
        proto = onnx.ModelProto()
        proto.opset_import.add(domain="", version=version if version is not None else 0)
        try:
            check_opset(proto, self.model_name)
        except Exception as exc:
            raise ir.passes.PreconditionError(str(exc)) from exc
        if self.policy.searched:
            raise ir.passes.PreconditionError(f"policy {self.policy.kind!r} is a search over budgets: use onebyone.optimize")
        if self.policy.needs_latency and self.latency is None:
            raise ir.passes.PreconditionError(f"policy {self.policy.describe()!r} spends measured time: give a latency model")
        self._interface = interface(model)
        self._input_valid = _passes_checker(model)

    def _tick(self, stage: str):
        return (lambda done, total: self.progress(stage, done, total)) if self.progress else None

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        normalized = initializer_inputs.constants_by_ir(model)  # IR < 4: its initializer inputs are constants
        shapes = resolve_input_shapes(model, self.input_shapes)
        params_before = count_params(model)
        infos = analyze(model, shapes, self.measure_shapes, self.forms, with_data=self.method == "data")
        exclusion.exclude(infos, self.exclude)
        candidates = [i for i in infos if i.skip_reason is None]
        self.source.prepare(model, candidates, self.progress)
        self.decisions = [plan.start(i, *self.source.statistics(i)) if i.skip_reason is None else plan.start(i)
                          for i in infos]
        for d in self.decisions:
            if d.candidate:
                form_choice.choose(d, lossless_first=self.policy.kind == "exact")
        if self.latency is not None:
            self._measure_times()
        gains = self.source.gains(model, self.decisions, self.policy.round_to) if self.policy.uses_gains else None
        self.policy.assign(self.decisions, gains)
        for d in self.decisions:
            if d.rank is not None and d.info.name in self.keep:
                plan.reject(d, self.keep[d.info.name], asked_rank=d.rank)
            elif d.rank is not None and self.latency is not None and d.latency:
                self._reject_if_not_faster(d)
        if self.latency is not None and self.latency.shares_kernels:
            self.latency.share_kernel_shapes(self.decisions)  # fewer kernels to tune (TVM)
        applied = self._rewrite_chosen(model)
        self.source.settle(model, applied)
        if self.policy.kind == "exact":
            self._undo_approximate(applied, model)
        for a in applied:
            for v in a.old_inputs[1:]:
                if v is not None:
                    rewrite.remove_if_unused(model.graph, v)
        layers = [plan.layer_report(d) for d in self.decisions]
        rewritten = [l for l in layers if l.action == "rewritten"]
        self.report = Report(
            model=self.model_name, policy=self.policy.describe(), method=self.method,
            input_shapes={k: list(v) for k, v in shapes.items()}, layers=layers,
            totals=_totals(layers, params_before, count_params(model), quantized_convs(model),
                           runtime_fused_convs(model)),
            calibration=self.source.describe(),
        )
        return ir.passes.PassResult(model, modified=bool(rewritten) or normalized)

    def _undo_approximate(self, applied: list[Applied], model: ir.Model) -> None:
        """Under the exact policy, undo every rewrite the source's measurement found not lossless (a subspace of the
        calibration inputs that the held-out samples leave): that policy keeps lossless rewrites only."""
        for a in applied:
            d = a.decision
            if d.rank is not None and not d.lossless:
                rewrite.remove(model.graph, a.inserted)
                error = f"measured error {d.measured_error:.2g}" if d.measured_error is not None else "not measured"
                plan.reject(d, f"not lossless on the calibration samples ({error}): the exact policy keeps lossless "
                               "rewrites only", asked_rank=d.rank)

    def _measure_times(self) -> None:
        """Each candidate's times in its form, and in its other forms when the policy chooses forms with the ranks
        (a budget)."""
        self.latency.measure(self.decisions, self._tick("timing"))
        if self.policy.kind != "budget":
            return
        for form in dict.fromkeys(f for d in self.decisions if d.candidate for f in d.info.forms):
            with form_choice.switched_to(self.decisions, form) as switched:
                if switched:
                    self.latency.measure(switched, self._tick(f"timing ({form} form)"))

    def _reject_if_not_faster(self, d: Decision) -> None:
        """A rewrite pays only when its measured pair beats the conv by more than the noise."""
        before, after = d.latency["before"], self.latency.pair_time(d, d.rank)
        if not after.faster_than(before):
            plan.reject(d, f"measured not faster on {self.latency.runtime['name']}: rank {d.rank} pair {after.ms:.4f} ms "
                           f"vs the conv {before.ms:.4f} ms", asked_rank=d.rank)

    def _rewrite_chosen(self, model: ir.Model) -> list[Applied]:
        """Rewrite every conv with a rank, in graph order, with the source's factors; what was done, to undo it."""
        chosen = [d for d in self.decisions if d.rank is not None]
        names = rewrite.UniqueNames(model.graph)
        shared: dict = {}
        applied: list[Applied] = []
        tick = self._tick("fitting")
        for k, d in enumerate(chosen):
            factors, d.fit = self.source.factors(d, model, bool(applied))
            d.weight_rel_error = factors.rel_error
            if factors.predicted_error is not None:
                d.predicted_error = factors.predicted_error
            applied.append(Applied(d, rewrite.insert(model.graph, d.info.node, factors, names, shared)))
            if tick:
                tick(k + 1, len(chosen))
        return applied

    def ensures(self, model: ir.Model) -> None:
        if self._interface is not None and interface(model) != self._interface:
            raise ir.passes.PostconditionError("the rewrite changed the model's inputs, outputs or metadata")
        if not self.report or not self.report.totals.rewritten or not self._input_valid:
            return  # a model the checker already rejected is not held to it after the rewrite
        try:
            _check(model)
        except Exception as exc:  # noqa: BLE001
            raise ir.passes.PostconditionError(f"rewritten model fails the ONNX checker: {exc}") from exc


def _totals(layers, params_before: int, params_after: int, quantized: int = 0, runtime_fused: int = 0) -> Totals:
    rewritten = [l for l in layers if l.action == "rewritten"]
    return Totals(
        convs=len(layers), rewritten=len(rewritten), lossless=sum(l.lossless for l in rewritten),
        macs_before=sum(l.macs_before for l in layers), macs_after=sum(l.macs_after for l in layers),
        params_before=params_before, params_after=params_after, quantized=quantized, runtime_fused=runtime_fused,
    )


QUANTIZED_CONVS = {("", "QLinearConv"), ("", "ConvInteger")}
RUNTIME_FUSED_CONVS = {("com.microsoft", "FusedConv"), ("com.microsoft.nchwc", "Conv")}


def _count_ops(model: ir.Model, kinds: set[tuple[str, str]]) -> int:
    """How many nodes of the model (subgraphs included) are of one of `kinds`, (domain, op type) pairs ("" for the
    default domain, also written "ai.onnx")."""
    return sum((n.domain if n.domain != "ai.onnx" else "", n.op_type) in kinds
               for n in ir.traversal.RecursiveGraphIterator(model.graph))


def quantized_convs(model: ir.Model) -> int:
    """How many convs of the model are quantized operators, which onebyone does not rewrite: QLinearConv
    (onnxruntime's QOperator format) and ConvInteger (dynamic quantization)."""
    return _count_ops(model, QUANTIZED_CONVS)


def runtime_fused_convs(model: ir.Model) -> int:
    """How many convs of the model are onnxruntime's own operators, which a model saved after onnxruntime's graph
    optimizations holds (FusedConv: a conv with its activation; com.microsoft.nchwc Conv: this CPU's blocked layout)
    and onebyone does not rewrite."""
    return _count_ops(model, RUNTIME_FUSED_CONVS)


def _check(model: ir.Model) -> None:
    """The ONNX checker, with shape inference when the weights are in memory."""
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=not has_external_data(model))


def _passes_checker(model: ir.Model) -> bool:
    try:
        _check(model)
    except Exception:  # noqa: BLE001
        return False
    return True
