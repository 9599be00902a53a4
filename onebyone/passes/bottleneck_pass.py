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
from onebyone.passes import rewrite
from onebyone.passes.analysis import analyze
from onebyone.passes.input_shapes import resolve_input_shapes
from onebyone.passes.plan import Decision, decide
from onebyone.passes.rank_policy import RankPolicy
from onebyone.report import Report, Totals


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
    """

    def __init__(
        self,
        policy: RankPolicy | None = None,
        input_shapes: dict[str, tuple[int, ...]] | None = None,
        model_name: str = "model",
    ) -> None:
        super().__init__()
        self.policy = policy or RankPolicy()
        self.input_shapes = dict(input_shapes or {})
        self.model_name = model_name
        self.report: Report | None = None
        self.decisions: list[Decision] = []
        self._interface: tuple | None = None
        self._input_valid = False

    def requires(self, model: ir.Model) -> None:
        opsets = model.opset_imports
        version = opsets.get("", opsets.get("ai.onnx"))
        proto = onnx.ModelProto()
        proto.opset_import.add(domain="", version=version if version is not None else 0)
        try:
            check_opset(proto, self.model_name)
        except Exception as exc:
            raise ir.passes.PreconditionError(str(exc)) from exc
        self._interface = interface(model)
        self._input_valid = _passes_checker(model)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        shapes = resolve_input_shapes(model, self.input_shapes)
        params_before = count_params(model)
        infos = analyze(model, shapes)
        cache: dict = {}
        self.decisions = [decide(info, self.policy, cache) for info in infos]
        names = rewrite.UniqueNames(model.graph)
        shared: dict = {}
        old_weights = []
        for d in self.decisions:
            if d.factors is not None:
                old_weights.append(d.info.node.inputs[1])
                rewrite.insert_bottleneck(model.graph, d.info.node, d.factors, names, shared)
        for w in old_weights:
            rewrite.remove_if_unused(model.graph, w)
        layers = [d.layer for d in self.decisions]
        rewritten = [l for l in layers if l.action == "rewritten"]
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
            input_shapes={k: list(v) for k, v in shapes.items()},
            layers=layers,
            totals=totals,
        )
        return ir.passes.PassResult(model, modified=bool(rewritten))

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
