"""Outputs that are decisions (a label map, a mask, the indices of the top classes) and the float values they are
decided from: what the calibrated measurements (output gains, the model-level check, the error search) compare in
their place. A decision changes in steps, so its relative error says nothing of how close a rewrite came to
changing it, and no gradient flows through it; the scores it is taken from say both. Verification still compares
the decisions themselves (the share of equal elements, verify.metrics)."""

from __future__ import annotations

import onnx_ir as ir

from onebyone.verify.metrics import discrete

DECIDERS = {"ArgMax", "ArgMin", "TopK", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Equal"}


def _decider(value: ir.Value) -> ir.Node | None:
    """The decision op (DECIDERS, default domain) computing `value`, or None."""
    producer = value.producer()
    if producer is None or producer.op_type not in DECIDERS or producer.domain not in ("", "ai.onnx"):
        return None
    return producer


def _is_discrete(value: ir.Value) -> bool:
    """Integer or boolean by its type, or (a model may leave its values untyped) by the decision op computing it."""
    if value.dtype is not None:
        return discrete(value.dtype.numpy())
    producer = _decider(value)
    if producer is None:
        return False
    return producer.op_type != "TopK" or value is producer.outputs[1]  # TopK's values are scores, its indices not


def decided_from(value: ir.Value) -> ir.Value | None:
    """The float value a decision `value` is taken from, through chains of decisions (Equal(ArgMax(y), k): y); None
    when it is not computed by a decision op or is decided from integers. A value of unknown dtype counts as a
    score unless a decision op computes it (models often carry no types for their intermediate values)."""
    seen = 0
    while seen < 16:
        producer = _decider(value)
        if producer is None:
            return value if seen and not _is_discrete(value) else None
        inputs = [v for v in producer.inputs if v is not None and v.const_value is None and not v.is_initializer()]
        if not inputs:
            return None
        value, seen = inputs[0], seen + 1
    return None


def measured_outputs(model: ir.Model) -> list[str]:
    """The values that stand for the model's outputs in calibrated measurements, one per output that has one, in
    output order without repeats: a float output itself; an integer or boolean output computed by a decision op
    (DECIDERS: ArgMax, ArgMin, TopK's indices, a comparison), the value it is decided from (the op's first computed
    input, through chains of decisions); other integer outputs (shapes, counts) none. Every output's own name when
    that leaves nothing."""
    names = []
    for out in model.graph.outputs:
        if not _is_discrete(out):
            names.append(out.name)
            continue
        source = decided_from(out)
        if source is not None:
            names.append(source.name)
    names = list(dict.fromkeys(names))
    return names or [v.name for v in model.graph.outputs]

