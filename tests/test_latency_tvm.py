"""--cost time on TVM (this machine): the latency model compiles every micro-model for the target and times it with
TVM, caches apart from onnxruntime's measurements, and the CLI says where it measured. (Boards and a tracker pool:
tests/test_aarch64.py.)"""

from __future__ import annotations

import json

import onnx
import onnx_ir as ir

from onebyone.latency import LatencyModel
from onebyone.latency.model import ranks_to_measure
from onebyone.latency.tvm_runtime import TvmRuntime
from onebyone.models import generators
from onebyone.passes import plan
from onebyone.passes.analysis import analyze
from onebyone.runtime import targets
from onebyone.runtime.processes import free_port
from test_cli import cli, one_line_error


def _model():
    return generators.vgg(size=16, widths=(8, 16), low_rank=0.5)


def test_tvm_latency_model_measures_compiled_micro_models_and_caches_apart(tmp_path):
    infos = analyze(ir.serde.deserialize_model(_model()), {"input": (1, 3, 16, 16)})
    decisions = [plan.start(i) for i in infos]
    lat = LatencyModel(cache_dir=tmp_path, repeats=3, runtime=TvmRuntime(targets.resolve("cpu")))
    assert lat.runtime["name"] == "tvm" and lat.runtime["target"]["kind"] == "llvm" and lat.threads >= 1
    lat.measure(decisions)
    live = [d for d in decisions if d.candidate]
    assert live and lat.misses == len(live)
    for d in live:
        assert set(d.latency["after"]) == set(ranks_to_measure(d))
        assert d.latency["before"].ms > 0 and all(t.ms > 0 for t in d.latency["after"].values())
    ort = LatencyModel(threads=1, cache_dir=tmp_path, repeats=3)
    ort.measure([plan.start(i) for i in infos])
    assert ort.hits == 0 and ort.misses == len(live)  # another runtime: its own cache entries
    again = LatencyModel(cache_dir=tmp_path, repeats=3, runtime=TvmRuntime(targets.resolve("cpu")))
    again.measure([plan.start(i) for i in infos])
    assert again.hits == len(live) and again.misses == 0


def test_cli_cost_time_on_tvm(tmp_path):
    model = tmp_path / "vgg.onnx"
    onnx.save(_model(), model)
    out, rep = tmp_path / "o.onnx", tmp_path / "r.json"
    proc = cli("optimize", model, "-o", out, "--cost", "time", "--runtime", "tvm", "--cache-dir", tmp_path / "c",
               "--report", rep, "--force")
    assert proc.returncode in (0, 1) and "measured on tvm" in proc.stdout, proc.stdout + proc.stderr
    timing = json.loads(rep.read_text())["timing"]
    assert timing["runtime"]["name"] == "tvm" and timing["runtime"]["devices"] == 1 and timing["time_before_ms"] > 0
    layers = json.loads(rep.read_text())["layers"]
    assert any(l["measured_ranks"] for l in layers)


def test_timing_options_that_do_not_go_together(tmp_path):
    model = tmp_path / "vgg.onnx"
    onnx.save(_model(), model)
    base = ("optimize", model, "-o", tmp_path / "o.onnx", "--cost", "time")
    one_line_error(cli(*base, "--rpc", "127.0.0.1:1"), "--runtime tvm")
    one_line_error(cli(*base, "--runtime", "tvm", "--rpc-tracker", "127.0.0.1:1"), "--device-key")
    one_line_error(cli(*base, "--runtime", "ort"), "--runtime must be onnxruntime or tvm")
    one_line_error(cli(*base, "--runtime", "tvm", "--rpc-tracker", f"127.0.0.1:{free_port()}", "--device-key", "k"),
                   "cannot reach the TVM RPC tracker")
    one_line_error(cli(*base, "--runtime", "tvm", "--time-target", "cortex-a72"), "give a pool (--rpc")
    one_line_error(cli(*base, "--runtime", "tvm", "--tuning-db", tmp_path / "none"), "not a folder")


def test_tvm_times_a_model_with_dynamic_input_dims_at_its_feeds_shape():
    """A whole model whose input has dynamic dims (as exported by paddle2onnx) is compiled for the feed it is timed
    on (it failed before: the end-to-end check of `--cost time --runtime tvm` on PP-OCR det)."""
    import numpy as np

    from onebyone.models.single_conv import single_conv_model

    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    model = single_conv_model(("N", 3, "H", "W"), w, pads=(1, 1, 1, 1))
    feed = {"x": np.zeros((1, 3, 12, 20), np.float32)}
    timings = TvmRuntime(targets.resolve("cpu")).time([model, model], [feed, feed], 3)
    assert len(timings) == 2 and all(t.ms > 0 for t in timings)
