"""Running ONNX models with onnxruntime (the reference numerics)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx.external_data_helper
import onnx_ir as ir
import onnxruntime as ort

from onebyone.errors import OneByOneError, first_line
from onebyone.modelio import has_external_data, unsupported_ops

ort.set_default_logger_severity(4)  # fatal only: its error lines would print before onebyone's one-line errors
IN_MEMORY_BYTES = 4096  # float initializers from this size on are handed to onnxruntime from memory, not serialized


def session(model: ir.Model | onnx.ModelProto | str | os.PathLike, label: str = "model",
            threads: int | None = None, spinning: bool = True,
            initializers: dict[str, np.ndarray] | None = None, arena: bool = True) -> ort.InferenceSession:
    """A CPU onnxruntime session for a model object or file (with `threads` intra-op threads, one inter-op thread,
    when given; 0: onnxruntime's choice; `spinning` False: its idle threads sleep instead of spinning); OneByOneError
    when onnxruntime cannot load it. `initializers`: the data of initializers the model marks as external, taken
    from these arrays in memory (which must outlive the session). `arena` False: memory is freed after each run
    instead of kept in onnxruntime's arena (for a session whose runs need much memory once)."""
    opts = ort.SessionOptions()
    if initializers:
        names = list(initializers)
        opts.add_external_initializers(names, [ort.OrtValue.ortvalue_from_numpy(initializers[n]) for n in names])
    opts.log_severity_level = 4  # fatal only (its errors reach the user in the exception)
    opts.enable_cpu_mem_arena = arena
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        if isinstance(model, onnx.ModelProto):
            return _open(model.SerializeToString(), opts)
        if isinstance(model, ir.Model):
            if has_external_data(model):
                with tempfile.TemporaryDirectory() as tmp:
                    path = Path(tmp) / "model.onnx"
                    ir.save(model, path, external_data="model.onnx.data")
                    return _open(str(path), opts)
            data = ir.serde.serialize_model(model).SerializeToString()
            return _open(data, opts)
        return _open(str(model), opts)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types; all mean "cannot run"
        if isinstance(model, ir.Model) and (ops := unsupported_ops(model)):
            raise OneByOneError(f"onnxruntime cannot load {label}: unsupported op(s) {', '.join(ops)}") from None
        text = " ".join(str(exc).split()) or type(exc).__name__
        if "onnxruntime_src" in text:  # drop the C++ source location, keep the message
            text = text.rsplit(") ", 1)[-1]
        raise OneByOneError(f"onnxruntime cannot load {label}: {text[:300]}") from None


def _open(model, opts: ort.SessionOptions) -> ort.InferenceSession:
    """A CPU session; a failure raises onnxruntime's own error (its Python wrapper would otherwise print to stdout,
    retry on the same CPU provider and raise the retry's error, which hid the real one)."""
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"], enable_fallback=0)


def in_memory_stub(name: str, array: np.ndarray) -> onnx.TensorProto:
    """An initializer whose data onnxruntime takes from `array` in memory (handed to `session` in `initializers`)."""
    proto = onnx.TensorProto(name=name, data_type=onnx.helper.np_dtype_to_tensor_dtype(array.dtype), dims=array.shape)
    proto.data_location = onnx.TensorProto.EXTERNAL
    entry = proto.external_data.add()
    entry.key, entry.value = "location", "in-memory"
    return proto


def weights_in_memory(proto: onnx.ModelProto, min_bytes: int = IN_MEMORY_BYTES) -> dict[str, np.ndarray]:
    """Replace `proto`'s float initializers of at least `min_bytes` by in-memory stubs; returns their arrays (for
    `session(..., initializers=...)`), so that the model's weights are not held twice, in the protobuf and in
    onnxruntime."""
    arrays = {}
    for i, tensor in enumerate(proto.graph.initializer):
        if tensor.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE) and tensor.raw_data and \
                len(tensor.raw_data) >= min_bytes:
            arrays[tensor.name] = onnx.numpy_helper.to_array(tensor)
            proto.graph.initializer[i].CopyFrom(in_memory_stub(tensor.name, arrays[tensor.name]))
    return arrays


def with_outputs(model: ir.Model | onnx.ModelProto, names: list[str], only: bool = False) -> onnx.ModelProto:
    """A protobuf copy of `model` that also outputs the named values (with `only`, outputs just those, so
    onnxruntime prunes everything downstream of them)."""
    proto = serialized(model) if isinstance(model, ir.Model) else model
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    if only:
        del out.graph.output[:]
    have = {o.name for o in out.graph.output}
    for n in names:
        if n not in have:
            out.graph.output.add().name = n
    return out


def serialized(model: ir.Model) -> onnx.ModelProto:
    """The model as a protobuf that runs from bytes: tensors stored in external files are read into it."""
    proto = ir.serde.serialize_model(model)
    if has_external_data(model):
        external = {v.name: v.const_value for v in model.graph.initializers.values()
                    if isinstance(v.const_value, ir.ExternalTensor)}
        for tensor in proto.graph.initializer:
            if tensor.name in external and tensor.data_location == onnx.TensorProto.EXTERNAL:
                onnx.external_data_helper.load_external_data_for_tensor(tensor, str(external[tensor.name].base_dir))
                tensor.data_location = onnx.TensorProto.DEFAULT
                del tensor.external_data[:]
    return proto


class Probe:
    """The one way onebyone runs a model in onnxruntime: a session that returns named values (the model's outputs by
    default, or any intermediate values: `names`; with `only`, just those, so the rest of the graph is pruned), fed
    from sample dicts that may hold more inputs than it takes. Every failure is a OneByOneError naming `label`."""

    def __init__(self, model, names: list[str] | None = None, label: str = "model", only: bool = False,
                 arena: bool = True) -> None:
        self.label = label
        source = with_outputs(model, names, only) if names else model
        self.session = session(source, label, arena=arena)
        self.names = list(names) if names and only else [o.name for o in self.session.get_outputs()]
        self.inputs = {i.name for i in self.session.get_inputs()}

    def run(self, feed: dict[str, np.ndarray], names: list[str] | None = None) -> dict[str, np.ndarray]:
        """The named values (default: all of this probe's) for one sample."""
        names = names or self.names
        missing = sorted(self.inputs - set(feed))
        if missing:
            raise OneByOneError(f"{self.label} needs input {missing[0]!r}, which the inputs given do not have")
        try:
            results = self.session.run(names, {k: v for k, v in feed.items() if k in self.inputs})
        except Exception as exc:  # noqa: BLE001 - a failed run is the model's or the inputs' problem
            raise OneByOneError(f"onnxruntime failed to run {self.label}: {first_line(exc)}") from None
        return dict(zip(names, results))

    def by_name(self, samples: list[dict[str, np.ndarray]]) -> dict[str, list[np.ndarray]]:
        """Per value name, one array per sample, in sample order."""
        outs: dict[str, list[np.ndarray]] = {n: [] for n in self.names}
        for feed in samples:
            for n, arr in self.run(feed).items():
                outs[n].append(arr)
        return outs


def run_samples(model, samples: list[dict[str, np.ndarray]], label: str = "model") -> dict[str, list[np.ndarray]]:
    """The model's outputs per output name, one array per sample, in sample order (a model, a file, or a Probe)."""
    probe = model if isinstance(model, Probe) else Probe(model, label=label)
    return probe.by_name(samples)


def measure_shapes(proto: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]], names: list[str]) -> dict[str, tuple[int, ...]]:
    """Shapes of the named values, measured by one run on zero inputs of the given shapes ({} when it fails)."""
    feed = {}
    for vi in proto.graph.input:
        if vi.name in input_shapes:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
            feed[vi.name] = np.zeros(input_shapes[vi.name], dtype=dtype)
    try:
        outs = Probe(proto, names, "shape probe", only=True).run(feed)
    except OneByOneError:  # shapes stay unknown; the convs are skipped with a reason
        return {}
    return {n: tuple(int(d) for d in o.shape) for n, o in outs.items()}
