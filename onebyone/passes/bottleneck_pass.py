"""BottleneckPass: the onnx-ir pass that puts 1x1 bottlenecks in front of spatial convs.

Rules it applies, in order, to every Conv of the main graph:
1. Skip (with a stated reason) convs whose weight is not a float constant, 1x1 convs, depthwise convs, convs
   with unknown spatial sizes and convs for which no rank lowers MACs.
2. Pick the per-group rank with the RankPolicy; skip when that rank is not strictly below break-even.
3. Replace W by B (1x1, grouped like the conv, no bias) then W' (original attributes and bias).
The model's inputs, outputs and metadata are unchanged; the pass checks it (ensures) with the ONNX checker.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

from onebyone.modelio import check_opset, has_external_data
from onebyone.passes import calibration, data_fit, factorize, plan, rewrite, sensitivity
from onebyone.passes.analysis import analyze
from onebyone.passes.input_shapes import resolve_input_shapes
from onebyone.passes.plan import Decision
from onebyone.passes.rank_policy import RankPolicy
from onebyone.report import Report, Totals

LOSSLESS_ON_DATA_MAX_ERROR = 1e-4  # a conv called lossless on data must measure at float32 level
BACK_OFF_FACTOR, BACK_OFF_MARGIN = 3.0, 0.02  # measured > 3 x predicted + 0.02: undo the rewrite


def interface(model: ir.Model) -> tuple:
    """The model's interface: input/output names, shapes, dtypes, and the model metadata."""
    sig = lambda vs: tuple((v.name, str(v.shape), str(v.dtype)) for v in vs)  # noqa: E731
    return sig(model.graph.inputs), sig(model.graph.outputs), tuple(sorted(model.metadata_props.items()))


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
        calibration: calibration samples (feed dicts). With them the method is "data": ranks come from the
            weight whitened by the input statistics, factors are fitted in graph order against the original
            outputs, biases are corrected, and each conv's output error is measured (convs whose measured error
            far exceeds the prediction are backed off).
        cache_dir: where calibration statistics are cached (None: not cached).
        progress: called as progress(stage, done, total) during long work.
    """

    def __init__(
        self,
        policy: RankPolicy | None = None,
        input_shapes: dict[str, tuple[int, ...]] | None = None,
        model_name: str = "model",
        calibration: list[dict] | None = None,
        cache_dir: str | None = None,
        progress=None,
    ) -> None:
        super().__init__()
        self.policy = policy or RankPolicy()
        self.input_shapes = dict(input_shapes or {})
        self.model_name = model_name
        self.calibration = calibration
        self.cache_dir = cache_dir
        self.progress = progress
        self.report: Report | None = None
        self.decisions: list[Decision] = []
        self._interface: tuple | None = None
        self._input_valid = False

    @property
    def method(self) -> str:
        return "data" if self.calibration else "weight"

    def requires(self, model: ir.Model) -> None:
        opsets = model.opset_imports
        version = opsets.get("", opsets.get("ai.onnx"))
        proto = onnx.ModelProto()
        proto.opset_import.add(domain="", version=version if version is not None else 0)
        try:
            check_opset(proto, self.model_name)
        except Exception as exc:
            raise ir.passes.PreconditionError(str(exc)) from exc
        if self.policy.kind == "error":
            raise ir.passes.PreconditionError("policy 'error' is a search over budgets: use onebyone.optimize")
        self._interface = interface(model)
        self._input_valid = _passes_checker(model)

    def _tick(self, stage: str):
        return (lambda done, total: self.progress(stage, done, total)) if self.progress else None

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        shapes = resolve_input_shapes(model, self.input_shapes)
        params_before = count_params(model)
        infos = analyze(model, shapes)
        original = model.clone() if self.method == "data" else None
        moments: dict = {}
        calib_info = None
        if self.method == "data":
            names = sorted({i.node.inputs[0].name for i in infos if i.skip_reason is None})
            moments, cached = calibration.collect_cached(model, self.calibration, names, self.cache_dir, self._tick("calibrating"))
            calib_info = {"samples": len(self.calibration), "convs": len(names), "from_cache": cached}
        self.decisions = [plan.start(i, moments.get(i.node.inputs[0].name) if i.skip_reason is None else None) for i in infos]
        gains = None
        if self.method == "data" and self.policy.kind == "budget":
            gains = sensitivity.output_gains(model, self.decisions, self.calibration, self.policy.round_to,
                                             self._tick("sensitivity"))
        plan.choose(self.decisions, self.policy, gains)
        chosen = [d for d in self.decisions if d.rank is not None]
        names = rewrite.UniqueNames(model.graph)
        shared: dict = {}
        svd_cache: dict = {}
        applied = []
        tick = self._tick("fitting")
        for k, d in enumerate(chosen):
            node = d.info.node
            old_inputs = list(node.inputs)
            if self.method == "data":
                stats, held, paired = data_fit.patch_moments(original, model if applied else None, self.calibration, d)
                factors, d.layer.fit = data_fit.fit(d, paired, stats, held)
            else:
                key = (id(node.inputs[1]), d.rank)
                factors = svd_cache.get(key) or svd_cache.setdefault(key, factorize.factorize_svd(d.info.weight, d.info.groups, d.rank))
            d.layer.weight_rel_error = factors.rel_error
            if getattr(factors, "predicted_error", None) is not None and self.method == "data":
                d.layer.predicted_error = factors.predicted_error
            squeeze = rewrite.insert_bottleneck(model.graph, node, factors, names, shared)
            applied.append((d, old_inputs, squeeze))
            if tick:
                tick(k + 1, len(chosen))
        if self.method == "data" and applied:
            self._measure_and_back_off(original, model, applied)
        for d, old_inputs, _ in applied:
            for v in old_inputs[1:]:
                if v is not None:
                    rewrite.remove_if_unused(model.graph, v)
        layers = [d.layer for d in self.decisions]
        rewritten = [l for l in layers if l.action == "rewritten"]
        if rewritten and model.ir_version is not None and model.ir_version < 4:
            model.ir_version = 4  # IR < 4 requires every initializer to be a graph input; the new factors are not

        totals = Totals(
            convs=len(layers),
            rewritten=len(rewritten),
            lossless=sum(l.lossless for l in rewritten),
            macs_before=sum(l.macs_before for l in layers),
            macs_after=sum(l.macs_after for l in layers),
            params_before=params_before,
            params_after=count_params(model),
        )
        self.report = Report(
            model=self.model_name,
            policy=self.policy.describe(),
            method=self.method,
            input_shapes={k: list(v) for k, v in shapes.items()},
            layers=layers,
            totals=totals,
            calibration=calib_info,
        )
        return ir.passes.PassResult(model, modified=bool(rewritten))

    def _measure_and_back_off(self, original: ir.Model, model: ir.Model, applied: list) -> None:
        """Measure each rewritten conv's output error on calibration data; undo rewrites whose error is far
        above the prediction (the prediction ignores padding and correlations between kernel taps)."""
        outs = [d.info.node.outputs[0].name for d, _, _ in applied]
        measured = data_fit.measure(original, model, self.calibration, outs)
        for (d, old_inputs, squeeze), name in zip(applied, outs):
            err = measured[name]
            d.layer.measured_error = err
            predicted = d.layer.predicted_error or 0.0
            if d.layer.lossless and err > LOSSLESS_ON_DATA_MAX_ERROR:
                d.layer.lossless = False
                d.layer.lossless_on = None
                d.layer.reason = f"approximate: rank {d.rank} (measured error {err:.2g} is not float-level)"
            if err > BACK_OFF_FACTOR * predicted + BACK_OFF_MARGIN:
                node = d.info.node
                created = list(node.inputs[1:]) + [squeeze.inputs[1]]
                for i, v in enumerate(old_inputs):
                    if i < len(node.inputs):
                        node.replace_input_with(i, v)
                    elif v is not None:
                        node.resize_inputs(i + 1)
                        node.replace_input_with(i, v)
                if len(node.inputs) > len(old_inputs):
                    node.resize_inputs(len(old_inputs))
                model.graph.remove(squeeze, safe=True)
                d.layer.action = "skipped"
                d.layer.reason = f"backed off: measured error {err:.3g} far above the predicted {predicted:.3g}"
                d.layer.macs_after = d.layer.macs_before
                d.layer.params_after = d.layer.params_before
                d.layer.lossless = False
                d.rank = None
                for v in created:
                    if v is not None:
                        rewrite.remove_if_unused(model.graph, v)

    def ensures(self, model: ir.Model) -> None:
        if self._interface is not None and interface(model) != self._interface:
            raise ir.passes.PostconditionError("the rewrite changed the model's inputs, outputs or metadata")
        if not self.report or not self.report.totals.rewritten or not self._input_valid:
            return  # a model the checker already rejected is not held to it after the rewrite
        try:
            _check(model)
        except Exception as exc:  # noqa: BLE001
            raise ir.passes.PostconditionError(f"rewritten model fails the ONNX checker: {exc}") from exc


def _check(model: ir.Model) -> None:
    """The ONNX checker, with shape inference when the weights are in memory."""
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=not has_external_data(model))


def _passes_checker(model: ir.Model) -> bool:
    try:
        _check(model)
    except Exception:  # noqa: BLE001
        return False
    return True
