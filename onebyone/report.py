"""The report: the single record of what onebyone did, read by the CLI tables, the JSON file and the plots."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from onebyone.atomic import atomic_file


@dataclasses.dataclass
class LayerReport:
    """One Conv: what was done to it and why. `rank` is per group; MACs are per batch item."""

    name: str
    action: str  # "rewritten" or "skipped"
    reason: str
    kernel: list[int]
    form: str  # "input" (1x1 then kxk), "output" (kxk then 1x1), "spatial" (kh x 1 then 1 x kw; 3D: kd x 1 x 1 then
    # 1 x kh x kw), "tucker2" (1x1, kxk, 1x1) or "pointwise" (a 1x1 conv as two 1x1 convs, a Gemm/MatMul as two matrix
    # products)
    in_channels: int
    out_channels: int
    groups: int
    strides: list[int]
    input_shape: list[int] | None
    output_shape: list[int] | None
    weight_source: str
    rank: int | None
    numerical_rank: int | None
    break_even_rank: float
    lossless: bool
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    weight_rel_error: float | None = None
    energy_kept: float | None = None
    lossless_on: str | None = None  # "all inputs" (weight rank) or "calibration data" (activation subspace)
    predicted_error: float | None = None  # relative output error the factorization predicts
    measured_error: float | None = None  # relative output error of this conv measured on calibration data
    fit: str | None = None  # data method: the candidate that won on held-out samples (svd, whitened, +refit)
    error_curve: list[float] | None = None  # predicted relative output error for rank 0..C/g
    output_error_curve: list[float] | None = None  # budget with data: predicted model-output error for rank 0..C/g
    singular_values: list[list[float]] | None = None
    data_singular_values: list[list[float]] | None = None
    time_before_ms: float | None = None  # measured on the target runtime (isolated micro-model), --cost time
    time_after_ms: float | None = None  # the rewritten pair at the chosen rank (= before when not rewritten)
    measured_ranks: dict[int, float] | None = None  # rank -> ms of the rewritten pair
    op: str = "Conv"  # or "Gemm"/"MatMul" (a constant-weight matrix product, read as a pointwise conv: kernel [1...],
    # shapes in conv layout [batch, channels, positions...])
    form_choice: str | None = None  # why this form won, when several forms applied (predicted errors compared)
    ranks: list[int] | None = None  # Tucker-2: the per-group ranks [input side, output side] of its rank knob `rank`
    rows: int | None = None  # Gemm/MatMul: its rows per batch item (passes.matrix.rows_per_item), what its MACs count


@dataclasses.dataclass
class Totals:
    """Sums over all Conv nodes (with the pointwise form, Gemm/MatMul layers too: see passes.matrix) for the MACs, and
    over all constant tensors of the model (params)."""

    convs: int
    rewritten: int
    lossless: int
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    quantized: int = 0  # QLinearConv and ConvInteger nodes: convs already quantized, not rewritten (and not counted)
    runtime_fused: int = 0  # onnxruntime's own conv nodes (FusedConv, NCHWc Conv): a model saved after its optimizations

    @property
    def mac_ratio(self) -> float:
        return self.macs_after / self.macs_before if self.macs_before else 1.0


METHOD_CHECK_FIELDS = ("kept", "samples", "measure", "confidence")  # method_check's keys that are not candidates


@dataclasses.dataclass
class Report:
    """Everything about one optimize (or inspect) run."""

    model: str
    policy: str
    method: str
    input_shapes: dict[str, list[int]]
    layers: list[LayerReport]
    totals: Totals
    verification: dict[str, Any] | None = None
    output: str | None = None
    calibration: dict[str, Any] | None = None
    # budget with data: model-output errors of the data-aware and the weight-only rewrite (and narrower data-aware
    # rewrites) on held-out calibration samples, one key per candidate, and the METHOD_CHECK_FIELDS: which one was
    # kept, over how many samples, what was measured, each data-aware candidate's share of resampled wins
    method_check: dict[str, Any] | None = None
    # --cost time: the runtime, and the whole model timed end to end (original and optimized alternating): time_before_ms,
    # time_after_ms, speedup (measured), predicted_speedup (from the per-conv latencies), ceiling_speedup (every
    # targeted conv at zero time), backed_off (convs undone because the model was not faster)
    timing: dict[str, Any] | None = None
    # --int8: the quantization scheme (onebyone.int8.SCHEME), its calibration samples, and `alone`: the original
    # quantized the same way, verified against the original on the same samples (the error INT8 brings by itself)
    int8: dict[str, Any] | None = None

    def to_dict(self, with_spectra: bool = False) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["totals"]["mac_ratio"] = self.totals.mac_ratio
        if not with_spectra:
            for layer in d["layers"]:
                for key in ("singular_values", "data_singular_values", "error_curve"):
                    layer.pop(key, None)
        return d

    def write_json(self, path: str | os.PathLike, with_spectra: bool = True) -> None:
        """Write the report as JSON, atomically."""
        write_json_atomic(path, self.to_dict(with_spectra=with_spectra))


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write `data` as indented JSON to `path` through a temp file and a rename."""
    with atomic_file(path) as tmp, open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=_jsonable)
        f.write("\n")


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")
