"""Static INT8 quantization with onnxruntime, the alternative users reach for and the step that follows a rewrite
when a model is deployed quantized (`--int8`).

One scheme, the fast path of onnxruntime's x86 and ARM CPU kernels: QDQ format, uint8 activations, int8 weights
per output channel, MinMax ranges from the calibration samples (onnxruntime.quantization.quantize_static after its
pre-processing: shape inference and graph optimization, without symbolic shape inference where that fails). Models
below opset 13 are converted to opset 13 first (per-channel DequantizeLinear needs its `axis` attribute). The nodes
that produce the model's outputs stay float, so that the outputs keep their precision (quantizing open_nsfw's Softmax
rounded its probabilities to multiples of 1/255, which hid every other error).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path

import onnx
import onnx_ir as ir

from onebyone.errors import OneByOneError
from onebyone.verify.onnxruntime_run import serialized

SCHEME = {"format": "QDQ", "activations": "uint8", "weights": "int8 per channel", "calibration": "MinMax",
          "tool": "onnxruntime.quantization.quantize_static"}
MIN_OPSET = 13


class _Reader:
    """onnxruntime's CalibrationDataReader over a list of feeds (a fresh pass per quantization)."""

    def __init__(self, samples: list[dict]) -> None:
        self._it = iter(samples)

    def get_next(self):
        return next(self._it, None)


def quantize(model: ir.Model | onnx.ModelProto, samples: list[dict], preprocess: bool = True,
             float_outputs: bool = True) -> ir.Model:
    """`model` statically quantized to INT8 (SCHEME) with ranges measured on `samples` (feeds by input name); the
    model's inputs, outputs and their float types are kept. `model` is not changed. `preprocess=False` skips
    onnxruntime's pre-processing (for small generated graphs); `float_outputs=False` quantizes the nodes that produce
    the outputs too (a micro-model whose one conv is timed as it runs inside a quantized model). One-line
    OneByOneError when onnxruntime cannot quantize it."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    if not samples:
        raise OneByOneError("INT8 quantization needs calibration samples")
    proto = serialized(model) if isinstance(model, ir.Model) else model
    proto = _plain_names(_at_least_opset(proto, MIN_OPSET))
    with tempfile.TemporaryDirectory(prefix="onebyone-int8-") as tmp:
        src, pre, out = Path(tmp, "model.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        large = proto.ByteSize() > 1_900_000_000
        onnx.save(proto, src, save_as_external_data=large)
        error = None
        for source in ([pre, src] if preprocess else [src]):  # the pre-processed model first, the model itself next
            try:
                with _quiet(), contextlib.chdir(tmp):  # the quantizer writes scratch files into the working folder
                    if source is pre and not _preprocess(src, pre, large):
                        continue
                    float_nodes = _name_output_producers(source, large) if float_outputs else []
                    quantize_static(str(source), str(out), _Reader(samples), quant_format=QuantFormat.QDQ,
                                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                    nodes_to_exclude=float_nodes, use_external_data_format=large)
                    _loads(out)
                error = None
                break
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises many types
                error = error or exc
        if error is not None:
            raise OneByOneError(f"INT8 quantization failed: {' '.join(str(error).split())[:300]}") from None
        quantized = ir.load(out)
        if large:  # the temp folder goes away: bring the weights into memory
            for value in quantized.graph.initializers.values():
                if value.const_value is not None:
                    value.const_value = ir.tensor(value.const_value.numpy(), name=value.name)
    return quantized


def _plain_names(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose values are named t0, t1, ... (the main graph's inputs and outputs keep their names): onnxruntime's
    quantizer mixes up some exporters' names (basic-pitch's tf2onnx names with ';' gave a model it cannot load)."""
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    keep = {v.name for v in proto.graph.input} | {v.name for v in proto.graph.output}
    mapping: dict[str, str] = {}

    def name(x: str) -> str:
        if not x or x in keep:
            return x
        if x not in mapping:
            fresh = f"t{len(mapping)}"
            while fresh in keep:
                fresh = "_" + fresh
            mapping[x] = fresh
        return mapping[x]

    def walk(g: onnx.GraphProto, main: bool) -> None:
        values = [*g.initializer, *g.value_info, *(() if main else (*g.input, *g.output))]
        for v in values:
            v.name = name(v.name)
        for n in g.node:
            n.input[:] = [name(x) for x in n.input]
            n.output[:] = [name(x) for x in n.output]
            for a in n.attribute:
                for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    walk(sub, False)

    walk(proto.graph, True)
    return proto


def _loads(path: Path) -> None:
    """Raise unless onnxruntime loads the model at `path` (the quantizer can write a model it cannot load:
    basic-pitch's Transpose, before its names were made plain)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # fatal only (its errors reach the user in the exception)
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _preprocess(src: Path, dst: Path, large: bool) -> bool:
    """onnxruntime's quantization pre-processing into `dst`; without its symbolic shape inference where that fails
    (PP-OCR det: "Incomplete symbolic shape inference"). False when no variant works (quantize without it)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    for skip_symbolic in (False, True):
        try:
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=skip_symbolic, save_as_external_data=large)
            return True
        except Exception:  # noqa: BLE001 - onnxruntime raises many types
            continue
    return False


def _name_output_producers(path: Path, large: bool) -> list[str]:
    """The names of the nodes that produce the graph outputs of the model at `path` (unnamed ones get a name, saved
    back), to be left unquantized."""
    proto = onnx.load(str(path), load_external_data=False)
    outputs = {o.name for o in proto.graph.output}
    taken = {n.name for n in proto.graph.node}
    names, renamed = [], False
    for i, node in enumerate(proto.graph.node):
        if outputs.intersection(node.output):
            if not node.name:
                node.name = next(f"onebyone_output_{i}_{k}" for k in range(len(taken) + 1)
                                 if f"onebyone_output_{i}_{k}" not in taken)
                renamed = True
            names.append(node.name)
    if renamed:
        onnx.save(proto, str(path))  # external data (if any) stays where it is, next to the file
    return names


@contextlib.contextmanager
def _quiet():
    """onnxruntime's quantization logs advice through the root logger at WARNING on every call: keep it out of the
    user's terminal (errors still raise)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _at_least_opset(proto: onnx.ModelProto, version: int) -> onnx.ModelProto:
    current = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), version)
    if current >= version:
        return proto
    try:
        return onnx.version_converter.convert_version(proto, version)
    except Exception as exc:  # noqa: BLE001
        raise OneByOneError(f"INT8 quantization needs opset >= {version}; converting from opset {current} failed: "
                            f"{' '.join(str(exc).split())[:200]}") from None


class Quantizer:
    """`quantize` with fixed calibration samples, as a step after each rewrite (`__call__`), for one original model
    whose quantization is made once (`original`). `progress(stage, done, total)` hears of each quantization."""

    def __init__(self, samples: list[dict], progress=None) -> None:
        self.samples = samples
        self.progress = progress
        self.done = 0
        self._original: ir.Model | None = None

    def __call__(self, model: ir.Model) -> ir.Model:
        if self.progress:
            self.progress("quantizing (INT8)", self.done, self.done + 1)
        quantized = quantize(model, self.samples)
        self.done += 1
        if self.progress:
            self.progress("quantizing (INT8)", self.done, self.done)
        return quantized

    def original(self, model: ir.Model) -> ir.Model:
        """The quantization of the original `model` (made on the first call; one original per Quantizer)."""
        if self._original is None:
            self._original = self(model)
        return self._original

    def describe(self) -> dict:
        return {**SCHEME, "calibration_samples": len(self.samples)}
