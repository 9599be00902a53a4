"""The chain of evidence: original (onnxruntime) → optimized (onnxruntime) → optimized compiled by TVM."""

from __future__ import annotations

import tempfile
from typing import Any

import numpy as np

from onebyone.runtime import targets
from onebyone.runtime.package import Package, compile_model, load_package
from onebyone.verify.compare import compare_outputs, model_precision
from onebyone.verify.parts import output_splits
from onebyone.verify.onnxruntime_run import run_samples
from onebyone.verify.tolerances import Tolerances

def target_tolerances(target: dict[str, Any]) -> Tolerances:
    """How close TVM's outputs must be to onnxruntime's on `target` (its family's tolerances: elementwise
    |tvm − ort| <= atol + rtol·|ort| per output part, relative L2 and cosine where the output is above the floor)."""
    return targets.family(target).tolerances


def run_package(pkg: Package, samples: list[dict]) -> dict[str, list[np.ndarray]]:
    """Outputs per output name, one array per sample, from a loaded package."""
    outs: dict[str, list[np.ndarray]] = {n: [] for n in pkg.output_names}
    for feed in samples:
        for name, arr in pkg.run(feed).items():
            outs[name].append(arr)
    return outs


def verify_chain(
    original, optimized, target: dict[str, Any], target_name: str, samples: list[dict], model_tolerances: Tolerances,
    input_shapes: dict | None = None, package: str | None = None, rpc=None, inputs_label: str = "random",
) -> list[dict[str, Any]]:
    """Three comparisons on the same samples, each with its tolerances:
    1. optimized vs original, both in onnxruntime (the rewrite; `model_tolerances`);
    2. optimized compiled for `target` vs optimized in onnxruntime (the compiler; target_tolerances);
    3. optimized compiled vs original in onnxruntime (end to end; `model_tolerances`).
    The package is compiled into a temp folder unless `package` is given; `rpc` (a runtime.remote.Remote) runs
    it on a remote device instead of locally."""
    ref = run_samples(original, samples, "original (onnxruntime)")
    opt = run_samples(optimized, samples, "optimized (onnxruntime)")
    with tempfile.TemporaryDirectory() as tmp:
        path = package or compile_model(optimized, target, f"{tmp}/pkg", input_shapes)
        if rpc is not None:
            got = rpc.run_package(path, samples)
        else:
            got = run_package(load_package(path), samples)
    label = f"optimized (TVM {target_name})"
    splits, precision = output_splits(original), model_precision(original, optimized)
    return [
        compare_outputs(ref, opt, model_tolerances, "original (onnxruntime)", "optimized (onnxruntime)", inputs_label,
                        splits, precision).to_dict(),
        compare_outputs(opt, got, target_tolerances(target), "optimized (onnxruntime)", label, inputs_label,
                        splits, precision).to_dict(),
        compare_outputs(ref, got, model_tolerances, "original (onnxruntime)", label, inputs_label,
                        splits, precision).to_dict(),
    ]
