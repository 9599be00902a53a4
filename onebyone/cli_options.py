"""The command line's option groups as objects: each group is a dataclass whose fields are typer options, and
`takes(name=Group, ...)` lets a command receive the group as one argument (typer still sees every option)."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import onnx_ir as ir
import typer

from onebyone.errors import OneByOneError
from onebyone.passes.analysis import DEFAULT_FORMS, FORMS, check_forms
from onebyone.passes.initializer_inputs import ConstantInitializersPass
from onebyone.passes.policies import POLICIES, Policy, RankPolicy
from onebyone.verify import tolerances as tol
from onebyone.verify.inputs import ImagePreprocess


@dataclasses.dataclass
class PolicyOptions:
    policy: Annotated[Optional[str], typer.Option("--policy", help=" | ".join(POLICIES) + " (exact: lossless only; see the README); default: the policy a given option names (--rank: rank, --energy: energy, --macs or --time: budget, --max-error: error), else exact")] = None
    rank: Annotated[Optional[float], typer.Option("--rank", help="rank policy: int per group, or fraction (0,1) of input channels")] = None
    energy: Annotated[Optional[float], typer.Option("--energy", help="energy policy: fraction of squared singular values kept")] = None
    round_to: Annotated[int, typer.Option("--round-to", help="round ranks up to a multiple of this (e.g. 8)")] = 1
    macs: Annotated[Optional[float], typer.Option("--macs", help="budget: fraction of the targeted convs' MACs to keep; saving: of each conv's")] = None
    max_error: Annotated[Optional[float], typer.Option("--max-error", help="error policy: max relative output error on calibration data")] = None
    time: Annotated[Optional[float], typer.Option("--time", help="budget policy: fraction of the targeted convs' measured time to keep (implies --cost time)")] = None
    forms: Annotated[str, typer.Option("--forms", help="factorization forms, comma-separated: " + ", ".join(FORMS) + " (output: kxk then 1x1; spatial: kh x 1 then 1 x kw, in 3D kd x 1 x 1 then 1 x kh x kw; tucker2: 1x1, kxk, 1x1; a budget chooses each conv's form and rank together by predicted error per MAC or ms saved, other policies the form of lower predicted error; pointwise: 1x1 convs, Gemm and constant-weight MatMul layers too)")] = ",".join(DEFAULT_FORMS)

    exclude: Annotated[Optional[list[str]], typer.Option("--exclude", help="leave the convs whose name matches this glob alone (repeatable; names as inspect lists them, e.g. 'head/*'); a budget is then a fraction of the other convs")] = None

    constant_initializers: Annotated[bool, typer.Option("--constant-initializers", help="initializers listed as graph inputs (overridable defaults since IR 4; older exporters list every weight so) are constants: convs reading them are rewritten, and they are no longer inputs of the written model. Under IR < 4 they always are", metavar="")] = False

    def constants(self, model: ir.Model) -> ir.Model:
        """`model`, its initializer inputs made constants (passes.initializer_inputs) with --constant-initializers."""
        if self.constant_initializers:
            ConstantInitializersPass()(model)
        return model

    def excluded(self) -> tuple[str, ...]:
        """The --exclude patterns given, in order."""
        return tuple(self.exclude or ())

    def form_list(self) -> tuple[str, ...]:
        """--forms as a tuple; an unknown or empty form list is a one-line error."""
        try:
            return check_forms(f.strip() for f in self.forms.split(",") if f.strip())
        except ValueError as exc:
            raise OneByOneError(f"--forms: {exc}") from None

    def build(self) -> Policy:
        """The policy named by --policy (or implied, see policy_name) with its options; a bad value is a one-line
        error naming the flags."""
        kind = self.policy_name()
        try:
            return RankPolicy(kind, rank=self.rank, energy=self.energy, round_to=self.round_to, macs=self.macs,
                              max_error=self.max_error, time=self.time)
        except ValueError as exc:
            cls = POLICIES.get(kind)
            flags = [f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(cls)] if cls else []
            raise OneByOneError(f"{exc}" + (f" (--policy {kind} takes {', '.join(flags)})" if flags else "")) from None

    def policy_name(self) -> str:
        """--policy, or without it the one policy that the given options belong to (`--time 0.6` alone means the
        budget policy), or exact when none is given; options of two policies without --policy are a one-line
        error."""
        if self.policy is not None:
            return self.policy
        implied = {kind for kind, value in (("rank", self.rank), ("energy", self.energy), ("budget", self.macs),
                                            ("budget", self.time), ("error", self.max_error)) if value is not None}
        if len(implied) > 1:
            raise OneByOneError(f"options of the {' and '.join(sorted(implied))} policies given together: choose one "
                                "with --policy")
        return implied.pop() if implied else "exact"


@dataclasses.dataclass
class CostOptions:
    cost: Annotated[str, typer.Option("--cost", help="macs (count) | time (measure every conv and the whole model on the --runtime; never slower) | auto: time with --calibration, else macs")] = "auto"
    threads: Annotated[int, typer.Option("--threads", min=0, help="onnxruntime threads when timing (--cost time), as deployed; 0: onnxruntime's choice")] = 0
    runtime: Annotated[str, typer.Option("--runtime", help="where --cost time measures: onnxruntime (this CPU) | tvm (--time-target, here or on --rpc / --rpc-tracker devices)")] = "onnxruntime"
    time_target: Annotated[str, typer.Option("--time-target", help="--runtime tvm: the TVM target to compile and time for (cpu, cortex-a72, ...)")] = "cpu"
    rpc: Annotated[Optional[str], typer.Option("--rpc", help="--runtime tvm: time on the device of this TVM RPC server (HOST:PORT)")] = None
    rpc_tracker: Annotated[Optional[str], typer.Option("--rpc-tracker", help="--runtime tvm: time on the devices of this TVM RPC tracker (HOST:PORT), with --device-key")] = None
    device_key: Annotated[Optional[str], typer.Option("--device-key", help="--rpc-tracker: the key the devices registered under")] = None
    int8: Annotated[bool, typer.Option("--int8", help="deploy INT8: quantize the rewrite statically on the --calibration data (onnxruntime QDQ, u8/s8 per channel); convs and the whole model are timed as INT8, against the original INT8", metavar="")] = False
    tuning_db: Annotated[Optional[Path], typer.Option("--tuning-db", help="--runtime tvm: apply this MetaSchedule database (e.g. the original model's, from `onebyone compile --tune-trials`)")] = None

    def latency(self, policy: Policy, cache_dir, calibrated: bool = False):
        """The latency model for --cost time (or a policy that spends time; or --cost auto with calibration data:
        measured time beat counted MACs on every bundled model, see the README), else None."""
        if self.cost not in ("macs", "time", "auto"):
            raise OneByOneError(f"--cost must be macs, time or auto, got {self.cost!r}")
        if self.runtime not in ("onnxruntime", "tvm"):
            raise OneByOneError(f"--runtime must be onnxruntime or tvm, got {self.runtime!r}")
        timed = self.cost == "time" or (self.cost == "auto" and calibrated) or policy.needs_latency
        if not timed:
            return None
        from onebyone.latency import LatencyModel

        return LatencyModel(threads=self.threads, cache_dir=cache_dir, runtime=self._runtime(), int8=self.int8)

    def _runtime(self):
        """None (onnxruntime) or a TvmRuntime for --time-target on the devices asked for."""
        if self.runtime == "onnxruntime":
            if self.rpc or self.rpc_tracker or self.tuning_db:
                raise OneByOneError("--rpc, --rpc-tracker and --tuning-db time with TVM: add --runtime tvm")
            return None
        from onebyone.latency.tvm_runtime import TvmRuntime
        from onebyone.runtime import targets
        from onebyone.runtime.pool import DevicePool

        if self.rpc and self.rpc_tracker:
            raise OneByOneError("give --rpc or --rpc-tracker, not both")
        if bool(self.rpc_tracker) != bool(self.device_key):
            raise OneByOneError("--rpc-tracker and --device-key go together")
        if self.tuning_db is not None and not self.tuning_db.is_dir():
            raise OneByOneError(f"--tuning-db {self.tuning_db}: not a folder")
        pool = (DevicePool.server(self.rpc) if self.rpc else
                DevicePool.tracker(self.rpc_tracker, self.device_key) if self.rpc_tracker else None)
        return TvmRuntime(targets.resolve(self.time_target), pool, self.tuning_db)


@dataclasses.dataclass
class CalibrationOptions:
    calibration: Annotated[Optional[str], typer.Option("--calibration", help="calibration data: .npz, image folder, or 'bundled'")] = None
    calibration_samples: Annotated[int, typer.Option("--calibration-samples", min=1, help="how many bundled calibration samples (crops/tones)")] = 32
    method: Annotated[str, typer.Option("--method", help="weight (SVD of the weight) | data (needs --calibration); default: data when calibrated")] = "auto"
    cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", help="cache calibration statistics here")] = None


@dataclasses.dataclass
class ImageOptions:
    image_size: Annotated[Optional[str], typer.Option("--image-size", help="HxW resize for --images (default: from the input shape)")] = None
    layout: Annotated[Optional[str], typer.Option("--layout", help="NCHW or NHWC for --images (default: the bundled model's, else the input's axis of 3 channels)")] = None
    bgr: Annotated[bool, typer.Option("--bgr", help="feed channels in BGR order", metavar="")] = False
    scale: Annotated[Optional[float], typer.Option("--scale", help="pixel multiplier before mean/std (default: 1/255, or the bundled model's)")] = None
    mean: Annotated[Optional[str], typer.Option("--mean", help="per-channel mean, e.g. 0.485,0.456,0.406")] = None
    std: Annotated[Optional[str], typer.Option("--std", help="per-channel std, e.g. 0.229,0.224,0.225")] = None

    def preprocess(self, input_shape: tuple[int, ...], name: str, base: ImagePreprocess | None = None,
                   dtype=np.float32) -> ImagePreprocess:
        """How a photo becomes an input `name` of `input_shape` and `dtype`: `base` (a bundled model's own
        preprocessing; None: RGB, pixels / 255, no mean or std) with every option given replacing its field; the size
        from --image-size, else from the shape; the layout from --layout, else the base's, else the shape's axis of 3
        (color) or 1 (gray) channels; a uint8 input takes the raw pixels (scaling options are then an error). A layout
        the shape contradicts is a one-line error."""
        layout = self.layout or (base.layout if base is not None else _image_layout(input_shape, name))
        if layout not in ("NCHW", "NHWC"):
            raise OneByOneError(f"--layout {layout!r}: expected NCHW or NHWC")
        axis = 1 if layout == "NCHW" else 3
        if len(input_shape) != 4 or input_shape[axis] not in (1, 3):
            raise OneByOneError(f"--images: input {name!r} has shape {list(input_shape)}, not {layout} with 3 color or "
                                f"1 gray channel(s) ({'[1, C, H, W]' if layout == 'NCHW' else '[1, H, W, C]'})")
        if np.dtype(dtype) == np.uint8 and (self.scale is not None or self.mean or self.std):
            raise OneByOneError(f"--images: input {name!r} is uint8 (raw pixels): --scale, --mean and --std do not "
                                "apply")
        if self.image_size:
            try:
                h, w = (int(x) for x in self.image_size.lower().split("x"))
            except ValueError:
                raise OneByOneError(f"--image-size {self.image_size!r}: expected HxW, e.g. 224x224") from None
        else:
            h, w = (input_shape[2], input_shape[3]) if layout == "NCHW" else (input_shape[1], input_shape[2])
        channels = input_shape[axis]
        if base is None:
            base = ImagePreprocess(h, w, mean=(0.0,) * channels, std=(1.0,) * channels, channels=channels)
        return dataclasses.replace(base, height=h, width=w, layout=layout, bgr=self.bgr or base.bgr,
                                   scale=self.scale if self.scale is not None else base.scale,
                                   mean=_floats(self.mean, "--mean", channels) or base.mean,
                                   std=_floats(self.std, "--std", channels) or base.std,
                                   channels=channels, dtype=np.dtype(dtype).name)


def _image_layout(shape: tuple[int, ...], name: str) -> str:
    """NCHW or NHWC, whichever axis of `shape` holds 3 color (else 1 gray) channels (NCHW when both do); a one-line
    error when the input is no image batch."""
    for channels in (3, 1):
        if len(shape) == 4 and shape[1] == channels:
            return "NCHW"
        if len(shape) == 4 and shape[3] == channels:
            return "NHWC"
    raise OneByOneError(f"--images: input {name!r} has shape {list(shape)}, not an image batch [1, C, H, W] (NCHW) "
                        "or [1, H, W, C] (NHWC) with 3 color or 1 gray channel(s)")


@dataclasses.dataclass
class InputOptions:
    inputs: Annotated[Optional[Path], typer.Option(
        "--inputs", help=".npz with [K, *shape] per input name, or [K, *shape[1:]] for a batch dim of 1 (see `onebyone "
                         "inputs`)")] = None
    images: Annotated[Optional[Path], typer.Option("--images", help="folder of images to verify on")] = None
    samples: Annotated[int, typer.Option("--samples", min=1, help=(
        "number of random samples when no inputs are given (optimize with --calibration verifies on its held-out "
        "samples instead)"))] = 4


@dataclasses.dataclass
class ToleranceOptions:
    max_rel_error: Annotated[Optional[float], typer.Option("--max-rel-error", help="tolerance: worst per-sample relative L2 error (per output part)")] = None
    min_cosine: Annotated[Optional[float], typer.Option("--min-cosine", help="tolerance: minimum cosine similarity")] = None
    min_top1: Annotated[Optional[float], typer.Option("--min-top1", help="tolerance: minimum top-1 agreement (class outputs)")] = None
    max_abs: Annotated[Optional[float], typer.Option("--max-abs", help="tolerance: maximum absolute error")] = None
    atol: Annotated[Optional[float], typer.Option("--atol", help="absolute noise level (default: from the dtype, float32 1e-5, and each output part's scale)")] = None
    rtol: Annotated[Optional[float], typer.Option("--rtol", help="elementwise test |got-ref| <= atol + rtol*|ref| (default: 1e-4 for lossless rewrites, off for approximate ones)")] = None

    def over(self, base: tol.Tolerances) -> tol.Tolerances:
        """`base` with the limits given on the command line replaced."""
        return tol.with_overrides(base, max_rel_l2=self.max_rel_error, min_cosine=self.min_cosine,
                                  min_top1=self.min_top1, max_abs=self.max_abs, atol=self.atol, rtol=self.rtol)


def _floats(text: str | None, option: str, channels: int) -> tuple[float, ...] | None:
    """--mean / --std: one number per channel (or one for all)."""
    if text is None:
        return None
    try:
        vals = tuple(float(x) for x in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) not in (1, channels):
        want = "one number (a gray input)" if channels == 1 else (
            f"{channels} comma-separated numbers (one per channel, e.g. 0.485,0.456,0.406) or one for all")
        raise OneByOneError(f"{option} {text!r}: expected {want}")
    return vals


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """'name:1x3x224x224' -> ('name', (1, 3, 224, 224)). The name may itself contain ':' (tf2onnx names)."""
    name, sep, dims = text.rpartition(":")
    if not sep or not name:
        raise OneByOneError(f"--input-shape {text!r}: expected NAME:DxDxD, e.g. x:1x3x224x224")
    try:
        shape = tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        raise OneByOneError(f"--input-shape {text!r}: dims must be integers separated by 'x'") from None
    if any(d <= 0 for d in shape):
        raise OneByOneError(f"--input-shape {text!r}: dims must be positive")
    return name, shape


def parse_input_shapes(texts: list[str] | tuple[str, ...] | None) -> dict[str, tuple[int, ...]]:
    """Parse repeated --input-shape options into a dict."""
    return dict(parse_input_shape(t) for t in (texts or ()))


def takes(**groups: type):
    """Decorator for a typer command: each `name=Group` replaces the command's parameter `name` by the group's
    options (typer sees them one by one) and hands the command one Group object built from them."""

    def decorate(fn):
        sig = inspect.signature(fn)
        hints = typing.get_type_hints(fn, include_extras=True)
        params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in sig.parameters.values()
                  if p.name not in groups]
        names: dict[str, list[str]] = {}
        for group, cls in groups.items():
            types = typing.get_type_hints(cls, include_extras=True)
            names[group] = [f.name for f in dataclasses.fields(cls)]
            params += [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                                         annotation=types[f.name]) for f in dataclasses.fields(cls)]

        @functools.wraps(fn)
        def command(*args, **kwargs):
            for group, cls in groups.items():
                kwargs[group] = cls(**{n: kwargs.pop(n) for n in names[group]})
            return fn(*args, **kwargs)

        command.__signature__ = sig.replace(parameters=params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        del command.__wrapped__  # typer must read the new signature, not the wrapped function's
        return command

    return decorate
