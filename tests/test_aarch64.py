"""aarch64: cross-compile a package and verify it through TVM RPC on an emulated board (qemu user mode).

The first run prepares the cached sysroot (Debian arm64 packages and PyPI aarch64 wheels; ~1 minute); later runs
reuse it. Needs qemu-aarch64 and aarch64-linux-gnu-g++ (scripts/setup-cross.sh installs them).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import onnx
import onnx_ir as ir
import psutil
import pytest

from onebyone import RankPolicy, optimize
from onebyone.modelio import save_model
from onebyone.models import generators
from onebyone.runtime import emulate, package, targets
from onebyone.runtime.processes import free_port as _free_port
from onebyone.runtime.processes import group_alive, listening, start_group, stop_group
from test_cli import cli, one_line_error


@pytest.fixture(scope="module")
def board():
    emulate.prepare()
    port = _free_port()
    proc = emulate.start(port)
    yield f"127.0.0.1:{port}"
    stop_group(proc)
    assert not group_alive(proc.pid)
    for _ in range(100):  # the listening socket goes with the last process holding it (the session check sees all)
        if not listening("127.0.0.1", port):
            break
        time.sleep(0.1)
    assert not listening("127.0.0.1", port)


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT"])
def test_stopping_emulate_ends_the_server_and_its_workers(how):
    """`kill` or Ctrl-C on `onebyone emulate aarch64` leaves nothing listening or running."""
    emulate.prepare()
    port = _free_port()
    proc = start_group([sys.executable, "-m", "onebyone", "emulate", "aarch64", "--port", str(port)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while not listening("127.0.0.1", port):
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", port)):  # a session makes the server fork its worker
            time.sleep(1)
        started = psutil.Process(proc.pid).children(recursive=True)
        assert any("qemu" in " ".join(p.cmdline()) for p in started)  # the server runs under qemu, in its own group
        proc.send_signal(getattr(signal, how))
        out, _ = proc.communicate()
        assert proc.returncode in (0, 130) and "stopped" in out
        assert not listening("127.0.0.1", port)
        left = [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert left == [], [p.cmdline() for p in left]
    finally:
        stop_group(proc)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("arm")
    original = folder / "vgg.onnx"
    onnx.save(generators.vgg(size=16, widths=(8, 16), low_rank=0.5), original)
    optimized_model, report = optimize(str(original), RankPolicy("exact"))
    assert report.totals.rewritten > 0
    return original, save_model(optimized_model, folder / "vgg.1x1.onnx")


def test_cross_compiled_package_verifies_on_the_emulated_board(board, models, tmp_path):
    original, optimized = models
    pkg = package.compile_model(ir.load(str(optimized)), targets.resolve("cortex-a72"), tmp_path / "arm")
    assert open(pkg / "model.so", "rb").read(20)[18] == 183  # ELF e_machine = EM_AARCH64
    proc = cli("verify", original, optimized, "--target", "cortex-a72", "--rpc", board, "--package", pkg, check_rc=0)
    assert proc.stdout.count("PASS") == 3 and "optimized (TVM cortex-a72)" in proc.stdout
    proc = cli("run", pkg, "--rpc", board, "--time", check_rc=0)
    assert "latency: median_ms" in proc.stdout


def test_rpc_errors(models, tmp_path):
    original, optimized = models
    one_line_error(cli("run", tmp_path / "none", "--rpc", "127.0.0.1:1"), "not a package folder")
    pkg = package.compile_model(ir.load(str(optimized)), targets.resolve("aarch64"), tmp_path / "arm")
    one_line_error(cli("run", pkg, "--rpc", f"127.0.0.1:{_free_port()}"), "cannot reach the TVM RPC server")
    one_line_error(cli("run", pkg, "--rpc", "nowhere"), "HOST:PORT")
    one_line_error(cli("run", pkg), "run it on that device")
    one_line_error(cli("verify", original, optimized, "--target", "aarch64"), "--rpc")
    one_line_error(cli("compile", optimized, "-o", tmp_path / "t", "--target", "aarch64", "--tune-trials", "4"), "--rpc")
    one_line_error(cli("compile", optimized, "-o", tmp_path / "t", "--target", "aarch64", "--tune-trials", "4",
                       "--rpc", f"127.0.0.1:{_free_port()}"), "cannot reach the TVM RPC server")


def test_tuning_times_candidates_on_the_board(board, models, tmp_path):
    original, optimized = models
    db, pkg = tmp_path / "db", tmp_path / "tuned"
    proc = cli("compile", optimized, "-o", pkg, "--target", "cortex-a72", "--tune-trials", "2", "--tuning-db", db,
               "--rpc", board, "--cost-model", "random", check_rc=0)
    assert f"timed on {board}" in proc.stdout and "random cost model" in proc.stdout
    manifest = package.read_manifest(pkg)
    assert manifest["tuning"]["measured_on"] == board and manifest["tuning"]["baselines"] == 1
    assert manifest["target"]["num-cores"] >= 1  # asked of the board's TVM runtime
    # every candidate and the default code ran on the board (a failed run is recorded as 1e10 s)
    records = [json.loads(line)[1] for line in (db / "database_tuning_record.json").read_text().splitlines()]
    assert len(records) >= 2 and sum(1 for r in records if not r[0][0]) == 1
    assert all(0 < r[1][0] < 1 for r in records)
    proc = cli("verify", original, optimized, "--target", "cortex-a72", "--rpc", board, "--package", pkg, check_rc=0)
    assert proc.stdout.count("PASS") == 3


def test_tuning_on_the_wrong_device_is_a_one_line_error(models, tmp_path):
    """An x86 RPC server cannot load aarch64 candidates: tuning stops with the loader's error, writes no package."""
    original, optimized = models
    port = _free_port()
    server = start_group([sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(port),
                          "--port-end", str(port + 1)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not listening("127.0.0.1", port):
            assert server.poll() is None
            time.sleep(0.2)
        proc = cli("compile", optimized, "-o", tmp_path / "t", "--target", "aarch64", "--tune-trials", "2",
                   "--rpc", f"127.0.0.1:{port}")
        one_line_error(proc, "none of the 2 candidates ran")
        assert "Failed to load" in proc.stderr + proc.stdout  # the device's own reason, not the RPC wrapper's
        assert not (tmp_path / "t").exists()
        # running an aarch64 package there: one line naming the server and why
        pkg = package.compile_model(ir.load(str(optimized)), targets.resolve("aarch64"), tmp_path / "arm")
        one_line_error(cli("run", pkg, "--rpc", f"127.0.0.1:{port}"), f"TVM RPC server 127.0.0.1:{port}",
                       "cannot load the package")
    finally:
        stop_group(server)
    assert not group_alive(server.pid)


@pytest.fixture(scope="module")
def board_farm():
    """A TVM RPC tracker with two emulated aarch64 boards registered under one key, as a board farm is run."""
    emulate.prepare()
    port = _free_port()
    tracker = start_group([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port),
                           "--port-end", str(port + 1)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    boards = []
    try:
        while not listening("127.0.0.1", port):
            assert tracker.poll() is None, "the tracker exited"
            time.sleep(0.2)
        address = f"127.0.0.1:{port}"
        boards = [emulate.start(_free_port(), tracker=address, key="farm-a72") for _ in range(2)]
        from tvm import rpc

        deadline = time.monotonic() + 120  # the boards register shortly after they listen
        while rpc.connect_tracker("127.0.0.1", port).summary()["queue_info"].get("farm-a72", {}).get("free", 0) < 2:
            assert time.monotonic() < deadline, "the boards did not register with the tracker"
            time.sleep(0.5)
        yield address
    finally:
        for proc in [*boards, tracker]:
            stop_group(proc)


def test_latency_measured_on_a_tracker_pool_is_spread_over_its_boards(board_farm, monkeypatch, tmp_path):
    """--cost time on TVM for cortex-a72 with --rpc-tracker: every free board of the key gets convs to time (each
    conv's original and pairs on one board), and the whole model is timed there too."""
    from onebyone.latency import LatencyModel
    from onebyone.latency.tvm_runtime import TvmRuntime
    from onebyone.passes import plan
    from onebyone.passes.analysis import analyze
    from onebyone.runtime.pool import DevicePool
    from onebyone.runtime.remote import Remote

    pool = DevicePool.tracker(board_farm, "farm-a72")
    assert len(pool) == 2
    used = []
    real_runner = Remote.runner
    monkeypatch.setattr(Remote, "runner", lambda self, path, feed: (used.append(self.address), real_runner(self, path, feed))[1])
    proto = generators.vgg(size=16, widths=(8, 16, 16), low_rank=0.5)
    decisions = [plan.start(i) for i in analyze(ir.serde.deserialize_model(proto), {"input": (1, 3, 16, 16)})]
    lat = LatencyModel(cache_dir=tmp_path, repeats=3, runtime=TvmRuntime(targets.resolve("cortex-a72"), pool))
    assert lat.runtime["devices"] == 2 and "farm-a72" in lat.runtime["device"]
    lat.measure(decisions)
    live = [d for d in decisions if d.candidate]
    assert len(live) >= 2 and all(d.latency["before"].ms > 0 for d in live)
    assert len(set(used)) == 2, used  # both boards timed convs
    pool.close()  # the tracker hands the boards to the next client (the CLI below) only once they are free
    onnx.save(proto, tmp_path / "vgg.onnx")
    proc = cli("optimize", tmp_path / "vgg.onnx", "-o", tmp_path / "o.onnx", "--cost", "time", "--runtime", "tvm",
               "--time-target", "cortex-a72", "--rpc-tracker", board_farm, "--device-key", "farm-a72",
               "--report", tmp_path / "r.json", "--force")
    assert proc.returncode in (0, 1) and "measured on tvm" in proc.stdout, proc.stdout + proc.stderr
    timing = json.loads((tmp_path / "r.json").read_text())["timing"]
    assert timing["runtime"]["devices"] == 2 and timing["runtime"]["target"]["mtriple"] == "aarch64-linux-gnu"
    one_line_error(cli("optimize", tmp_path / "vgg.onnx", "-o", tmp_path / "o.onnx", "--cost", "time", "--runtime",
                       "tvm", "--time-target", "cortex-a72", "--rpc-tracker", board_farm, "--device-key", "nokey"),
                   "no device registered under that key", "farm-a72")


def test_a_model_without_kernels_cross_compiles(tmp_path):
    """A model with no kernel (x -> Identity) still links for aarch64 (TVM takes the triple of such a library from
    the host compiler unless told)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    pkg = package.compile_model(model, targets.resolve("cortex-a72"), tmp_path / "arm")
    assert open(pkg / "model.so", "rb").read(20)[18] == 183  # ELF e_machine = EM_AARCH64
