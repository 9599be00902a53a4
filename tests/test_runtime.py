"""TVM runtime: compile, package, load in a fresh process, run, verify the chain; CUDA device code; bad input."""

from __future__ import annotations

import ctypes.util
import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from conftest import rel_err, run_ort
from onebyone import RankPolicy, optimize
from onebyone.errors import OneByOneError
from onebyone.models import generators
from onebyone.modelio import save_model
from onebyone.runtime import cuda, package, targets
from test_cli import cli, one_line_error


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A generated ResNet with low-rank weights, and its lossless rewrite, as files."""
    folder = tmp_path_factory.mktemp("rt")
    original = folder / "resnet.onnx"
    onnx.save(generators.resnet(size=32, low_rank=0.5), original)
    optimized_model, report = optimize(str(original), RankPolicy("exact"))
    assert report.verification["passed"] and report.totals.rewritten > 0
    optimized = save_model(optimized_model, folder / "resnet.1x1.onnx")
    return original, optimized


def test_compile_run_matches_onnxruntime_and_round_trips_in_a_fresh_process(models, tmp_path):
    original, optimized = models
    pkg_dir = package.compile_model(ir.load(str(optimized)), targets.resolve("cpu"), tmp_path / "pkg", source_path=str(optimized))
    manifest = json.loads((pkg_dir / "manifest.json").read_text())
    assert manifest["target"]["kind"] == "llvm" and manifest["target"]["mcpu"] == targets.host_cpu()
    assert manifest["inputs"] == [{"name": "input", "shape": [1, 3, 32, 32], "dtype": "float32"}]
    assert manifest["tvm_version"].startswith("0.27") and len(manifest["source_model_sha256"]) == 64
    x = np.random.default_rng(0).standard_normal((2, 1, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "x.npz", input=x)
    # a fresh process loads the package and runs it through the CLI
    proc = cli("run", pkg_dir, "--inputs", tmp_path / "x.npz", "-o", tmp_path / "y.npz", "--time", check_rc=0)
    assert "latency: median_ms" in proc.stdout
    got = np.load(tmp_path / "y.npz")[manifest["outputs"][0]["name"]]
    for i in range(2):
        ref = run_ort(onnx.load(original), {"input": x[i]})[0]
        assert rel_err(ref, got[i]) < 1e-4


def test_verify_chain_on_cpu(models):
    original, optimized = models
    proc = cli("verify", original, optimized, "--target", "cpu", check_rc=0)
    assert proc.stdout.count("PASS") == 3 and "optimized (TVM cpu)" in proc.stdout


def test_verify_chain_catches_a_wrong_package(models, tmp_path):
    """A package compiled from another model fails the TVM step of the chain."""
    original, optimized = models
    other = tmp_path / "other.onnx"
    onnx.save(generators.resnet(size=32, low_rank=0.5, seed=9), other)
    pkg_dir = package.compile_model(ir.load(str(other)), targets.resolve("cpu"), tmp_path / "pkg")
    proc = cli("verify", original, optimized, "--target", "cpu", "--package", pkg_dir, check_rc=1)
    assert "FAIL" in proc.stdout


def test_cuda_package_holds_device_code_that_nvcc_compiles(models, tmp_path):
    if cuda.find_nvcc() is None:
        pytest.fail("nvcc is required for the CUDA device-code check (the test extra installs nvidia-cuda-nvcc)")
    _, optimized = models
    pkg_dir = package.compile_model(ir.load(str(optimized)), targets.resolve("cuda"), tmp_path / "cuda")
    code = json.loads((pkg_dir / "manifest.json").read_text())["device_code"]
    assert code["checked"] and code["arch"] == "sm_90"
    cubin = (pkg_dir / code["cubin"]).read_bytes()
    assert cubin[:4] == b"\x7fELF" and len(cubin) == code["cubin_bytes"]
    assert "__global__" in (pkg_dir / "device.cu").read_text()
    other = package.compile_model(ir.load(str(optimized)), targets.resolve("cuda:arch=sm_80"), tmp_path / "cuda80")
    assert json.loads((other / "manifest.json").read_text())["device_code"]["cubin"] == "device.sm_80.cubin"


def test_cuda_package_without_a_driver_is_a_one_line_error(models, tmp_path):
    """Loading a CUDA package where TVM's CUDA runtime cannot load (no NVIDIA driver) names the missing library."""
    if ctypes.util.find_library("cuda") is not None:
        pytest.skip("this machine has an NVIDIA driver: scripts/gpu_check.sh covers the GPU run")
    _, optimized = models
    pkg_dir = package.compile_model(ir.load(str(optimized)), targets.resolve("cuda"), tmp_path / "cuda")
    with pytest.raises(OneByOneError, match=r"libcuda\.so\.1"):
        package.load_package(pkg_dir)
    one_line_error(cli("run", pkg_dir), "libcuda.so.1")
    # tuning for cuda times candidates on a GPU: said before any tuning work, no package written
    one_line_error(cli("compile", optimized, "-o", tmp_path / "tuned", "--target", "cuda", "--tune-trials", "2"),
                   "libcuda.so.1")
    assert not (tmp_path / "tuned").exists()


def test_targets():
    assert targets.resolve("cuda:arch=sm_80")["arch"] == "sm_80"
    assert targets.resolve('{"kind": "llvm", "mtriple": "aarch64-linux-gnu"}')["mtriple"] == "aarch64-linux-gnu"
    assert targets.is_cross(targets.resolve("aarch64")) and not targets.is_cross(targets.resolve("cpu"))
    targets.register("my-board", {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a55"})
    assert targets.resolve("my-board")["mcpu"] == "cortex-a55"
    for bad in ("mars", "{not json", '{"mtriple": "x"}', "cuda:arch"):
        with pytest.raises(OneByOneError):
            targets.resolve(bad)
    # every preset belongs to the family that says how it is built, loaded and checked
    assert {n: targets.family(targets.resolve(n)).name for n in ("cpu", "x86-64", "x86-64-v3", "aarch64", "cortex-a72", "cuda")} == {
        "cpu": "cpu", "x86-64": "cpu", "x86-64-v3": "x86-64-v3", "aarch64": "aarch64", "cortex-a72": "aarch64", "cuda": "cuda"}
    assert targets.family(targets.resolve("cuda")).tolerances.rtol == 1e-3
    assert targets.family(targets.resolve("my-board")).cross_compiler == "aarch64-linux-gnu-g++"


def test_the_x86_64_v3_target_added_as_one_module_builds_and_runs_where_the_cpu_has_avx2(models, tmp_path):
    """The example target (x86-64-v3: AVX2 + FMA): compiled here, and run and compared with onnxruntime where this
    machine's CPU has those instructions (detected, not assumed)."""
    import platform

    original, optimized = models
    pkg_dir = package.compile_model(ir.load(str(optimized)), targets.resolve("x86-64-v3"), tmp_path / "v3")
    assert json.loads((pkg_dir / "manifest.json").read_text())["target"]["mcpu"] == "x86-64-v3"
    flags = open("/proc/cpuinfo").read().split() if platform.machine() == "x86_64" else []
    if {"avx2", "fma"} <= set(flags):
        x = np.random.default_rng(2).standard_normal((1, 3, 32, 32)).astype(np.float32)
        ref = run_ort(onnx.load(str(optimized)), {"input": x})[0]
        got = next(iter(package.load_package(pkg_dir).run({"input": x}).values()))
        assert rel_err(ref, got) < 1e-4


def test_runtime_bad_input(models, tmp_path):
    _, optimized = models
    one_line_error(cli("compile", optimized, "-o", tmp_path / "p", "--target", "mars"), "unknown target 'mars'")
    one_line_error(cli("compile", optimized, "-o", tmp_path / "p", "--target", "aarch64", "--cross-compiler", "no-such-g++"),
                   "cross compiler 'no-such-g++' not found")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    celu = helper.make_model(helper.make_graph([helper.make_node("Celu", ["x"], ["y"])], "g", [x], [y]),
                             opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(celu, tmp_path / "celu.onnx")
    one_line_error(cli("compile", tmp_path / "celu.onnx", "-o", tmp_path / "p"), "does not support op(s): Celu")
    one_line_error(cli("run", tmp_path / "nowhere"), "not a package folder")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{ half a manifest")
    one_line_error(cli("run", broken), "corrupt manifest")
    good = package.compile_model(ir.load(str(optimized)), targets.resolve("cpu"), tmp_path / "good")
    (good / "model.so").write_bytes(b"not a library")
    one_line_error(cli("run", good), "cannot load the library")
    assert not (tmp_path / "p").exists()


def test_tuning_picks_the_heaviest_kernels():
    import tvm
    from tvm.relax.frontend.onnx import from_onnx
    from tvm.s_tir import meta_schedule as ms

    from onebyone.runtime import tuning

    proto = generators.vgg(size=16, widths=(8, 16))
    target = tvm.target.Target(targets.resolve("cpu"))
    prepared = tuning.prepare_for_tuning(from_onnx(proto, keep_params_in_input=False), target)
    lowered = tuning.lower_for_tuning(prepared, target)
    tasks = ms.relax_integration.extract_tasks(lowered, target)
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert len(tasks) > len(convs) > 2
    chosen = tuning.select_tasks(tasks, 4)
    assert len(chosen) == 1 and "conv2d" in chosen[0].task_name
    assert len(tuning.select_tasks(tasks, 4 * len(tasks))) < len(tasks)  # 90% of the FLOPs need not every kernel
    assert len(tuning.select_tasks(tasks, 1)) == 1
    cost = {t.task_name: float(tvm.s_tir.analysis.estimate_tir_flops(t.dispatched[0])) * t.weight for t in tasks
            if "conv2d" in t.task_name}
    assert cost[chosen[0].task_name] == max(cost.values())


def test_cost_model_choice(monkeypatch, tmp_path):
    from onebyone.runtime import tuning

    assert tuning.resolve_cost_model("auto") == "xgb" and tuning.resolve_cost_model("random") == "random"
    model = tmp_path / "vgg.onnx"
    onnx.save(generators.vgg(size=16, widths=(8, 16)), model)
    one_line_error(cli("compile", model, "-o", tmp_path / "p", "--tune-trials", "2", "--cost-model", "gbm"),
                   "unknown cost model 'gbm'")
    real_find_spec = tuning.importlib.util.find_spec
    monkeypatch.setattr(tuning.importlib.util, "find_spec", lambda name: None if name == "xgboost" else real_find_spec(name))
    assert tuning.resolve_cost_model("auto") == "random"
    with pytest.raises(OneByOneError, match=r"onebyone\[tune\]"):
        tuning.resolve_cost_model("xgb")


def test_tuning_saves_a_database_that_a_second_compile_reuses(tmp_path):
    model = tmp_path / "vgg.onnx"
    onnx.save(generators.vgg(size=16, widths=(8, 16)), model)
    db = tmp_path / "db"
    proc = cli("compile", model, "-o", tmp_path / "tuned", "--tune-trials", "4", "--tuning-db", db, check_rc=0)
    assert "tuned: 4 trials" in proc.stdout and (db / "database_tuning_record.json").stat().st_size > 0
    manifest = json.loads((tmp_path / "tuned" / "manifest.json").read_text())
    tuning = manifest["tuning"]
    assert tuning["trials"] == 4 and tuning["tuned_kernels"] == 1 and tuning["kernels"] > 1
    assert tuning["cost_model"] == "xgb"  # the test extra installs xgboost (the `tune` extra)
    # the tuned kernel's default (unscheduled: empty trace) code is a measured record too
    records = [json.loads(line)[1] for line in (db / "database_tuning_record.json").read_text().splitlines()]
    assert tuning["baselines"] == 1 and sum(1 for r in records if not r[0][0]) == 1
    # the tuned kernel's record is really looked up when the model is compiled (a workload that matches nothing
    # would leave every kernel on the default code, silently)
    assert tuning["applied_kernels"] == 1
    assert all(r[1] and min(r[1]) > 0 for r in records)
    proc = cli("compile", model, "-o", tmp_path / "again", "--tuning-db", db, check_rc=0)
    assert "0 trials" in proc.stdout and "reused" in proc.stdout and "1 kernel(s) scheduled from the database" in proc.stdout
    other = tmp_path / "other.onnx"  # another model: the database matches none of its kernels, and says so
    onnx.save(generators.vgg(size=16, widths=(4, 4)), other)
    proc = cli("compile", other, "-o", tmp_path / "other", "--tuning-db", db, check_rc=0)
    assert "matches no kernel" in proc.stdout
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    ref = run_ort(onnx.load(model), {"input": x})[0]
    for folder in ("tuned", "again"):
        got = package.load_package(tmp_path / folder).run({"input": x})
        assert rel_err(ref, next(iter(got.values()))) < 1e-4


def test_every_rpc_failure_is_one_line_naming_the_server():
    from onebyone.runtime.remote import rpc_failure

    class RPCSessionTimeoutError(Exception):
        pass

    cases = [(RPCSessionTimeoutError("session timeout"), "timed out"),
             (RuntimeError("Failed to load module: wrong ELF class: ELFCLASS64"), "cannot load the package"),
             (ConnectionError("Connection refused"), "connection failed"),
             (ValueError("something\nelse"), "ValueError: something else")]
    for exc, needle in cases:
        msg = str(rpc_failure("10.0.0.7:9090", exc))
        assert msg.startswith("TVM RPC server 10.0.0.7:9090: ") and needle in msg and "\n" not in msg, msg


def test_tuning_from_another_models_database_spends_trials_on_the_new_kernels(tmp_path, monkeypatch):
    """The rewritten model tuned from a copy of the original's database: kernels the original already tuned are not
    tuned again (the trials go to the rewritten convs' new kernels), and the manifest reports the coverage."""
    import shutil

    from onebyone.runtime import package

    from onebyone.passes.analysis import analyze
    from onebyone.runtime import tuning

    proto = generators.vgg(size=16, widths=(8, 16), low_rank=0.5)
    infos = [i for i in analyze(ir.serde.deserialize_model(proto), {"input": (1, 3, 16, 16)}) if i.skip_reason is None]
    heaviest = max(infos, key=lambda i: i.macs).node.inputs[1].name
    weight = next(t for t in proto.graph.initializer if t.name == heaviest)  # full rank: the rewrite leaves it alone
    weight.CopyFrom(onnx.numpy_helper.from_array(
        np.random.default_rng(0).standard_normal(onnx.numpy_helper.to_array(weight).shape).astype(np.float32), heaviest))
    original = ir.serde.deserialize_model(proto)
    optimized, report = optimize(original, RankPolicy("exact"), verify=False)
    assert report.totals.rewritten > 0
    target = targets.resolve("cpu")
    # 4 trials: the original's heaviest kernel only (that conv, untouched by the rewrite)
    a = package.compile_model(original, target, tmp_path / "a", tune_trials=4, tuning_db=tmp_path / "db-a",
                              cost_model="random")
    shutil.copytree(tmp_path / "db-a", tmp_path / "db-b")
    b = package.compile_model(optimized, target, tmp_path / "b", tune_trials=4, tuning_db=tmp_path / "db-b",
                              cost_model="random")
    ta, tb = package.read_manifest(a)["tuning"], package.read_manifest(b)["tuning"]
    assert ta["reused_kernels"] == 0 and ta["coverage"]["kernels_with_records"] >= ta["tuned_kernels"] > 0
    assert tb["reused_kernels"] == 1 and tb["tuned_kernels"] == 1  # the untouched conv kept its records; a new kernel got the trials
    assert 0 < tb["coverage"]["flops_covered"] <= 1 and tb["coverage"]["kernels"] > ta["coverage"]["kernels"]
    assert tb["applied_kernels"] >= tb["reused_kernels"]
    monkeypatch.setattr(tuning, "FLOP_SHARE", 1e-6)  # every kernel worth tuning has records: tuned deeper
    again = package.compile_model(optimized, target, tmp_path / "c", tune_trials=4, tuning_db=tmp_path / "db-b",
                                  cost_model="random")
    tc = package.read_manifest(again)["tuning"]
    assert tc["reused_kernels"] == 0 and tc["tuned_kernels"] == 1 and tc["records"] > tb["records"]


def test_the_output_spatial_and_tucker2_forms_compile_with_tvm_and_match_onnxruntime(tmp_path, rng):
    """Three convs exactly low-rank for the output, the spatial and the Tucker-2 form (one strided with SAME_UPPER,
    one grouped and dilated), rewritten losslessly in those forms, compile for this CPU with TVM and give the
    original's outputs."""
    from onebyone.models.weights import low_rank_output_weight, low_rank_spatial_weight, low_rank_tucker2_weight

    w1 = low_rank_output_weight(32, 8, (3, 3), 1, 3, rng)
    w2 = low_rank_spatial_weight(16, 16, (3, 5), 2, 2, rng)
    inits = [onnx.numpy_helper.from_array(w1, "w1"), onnx.numpy_helper.from_array(w2, "w2"),
             onnx.numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b2"),
             onnx.numpy_helper.from_array(low_rank_tucker2_weight(32, 16, (3, 3), 1, 6, rng), "w3")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], strides=[2, 2], auto_pad="SAME_UPPER", name="c1"),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Conv", ["r", "w2", "b2"], ["h2"], group=2, dilations=[1, 2], pads=[1, 4, 1, 4], name="c2"),
             helper.make_node("Conv", ["h2", "w3"], ["y"], pads=[1, 1, 1, 1], name="c3")]
    graph = helper.make_graph(nodes, "forms", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 20, 20])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    optimized, report = optimize(ir.serde.deserialize_model(model), RankPolicy("exact"),
                                 forms=("input", "output", "spatial", "tucker2"))
    assert [(l.form, l.lossless) for l in report.layers] == [("output", True), ("spatial", True), ("tucker2", True)]
    pkg_dir = package.compile_model(optimized, targets.resolve("cpu"), tmp_path / "pkg")
    x = rng.standard_normal((1, 8, 20, 20)).astype(np.float32)
    (got,) = package.load_package(pkg_dir).run({"x": x}).values()
    assert rel_err(run_ort(model, {"x": x})[0], got) < 1e-4


def test_a_3d_conv_in_the_spatial_form_compiles_with_tvm_and_matches_onnxruntime(tmp_path, rng):
    """A strided, dilated 3D conv exactly low-rank in the spatial unfolding, rewritten losslessly as (1+2)D (kd x 1 x 1
    then 1 x kh x kw), compiles for this CPU with TVM and gives the original's outputs."""
    from onebyone.models.single_conv import single_conv_model
    from onebyone.models.weights import low_rank_spatial_weight

    w = low_rank_spatial_weight(12, 8, (3, 3, 3), 1, 3, rng)
    model = single_conv_model((1, 8, 7, 9, 9), w, rng.standard_normal(12).astype(np.float32), strides=(2, 1, 1),
                              dilations=(1, 2, 1), pads=(1, 2, 0, 1, 1, 1))
    optimized, report = optimize(ir.serde.deserialize_model(model), RankPolicy("exact"), forms=("input", "spatial"))
    assert [(l.form, l.lossless) for l in report.layers] == [("spatial", True)]
    pkg_dir = package.compile_model(optimized, targets.resolve("cpu"), tmp_path / "pkg")
    x = rng.standard_normal((1, 8, 7, 9, 9)).astype(np.float32)
    (got,) = package.load_package(pkg_dir).run({"x": x}).values()
    assert rel_err(run_ort(model, {"x": x})[0], got) < 1e-4
