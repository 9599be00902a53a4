"""Shared helpers: onnxruntime as the independent reference."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest


def run_ort(model: onnx.ModelProto | ir.Model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of `model` in onnxruntime (CPU)."""
    proto = ir.serde.serialize_model(model) if isinstance(model, ir.Model) else model
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a64 - b64) / max(np.linalg.norm(a64), 1e-30))


def check_errors(check: dict) -> dict[str, float]:
    """The held-out errors in a report's method_check, by candidate."""
    from onebyone.report import METHOD_CHECK_FIELDS

    return {k: v for k, v in check.items() if k not in METHOD_CHECK_FIELDS}


def expected_kept(check: dict) -> str:
    """The candidate a method_check must have kept: the lowest held-out error among weight-only SVD and the
    data-aware candidates that beat it in at least CONFIDENCE of the held-out resamples (the rule as documented)."""
    from onebyone.calibrated.holdout import CONFIDENCE

    errors = check_errors(check)
    eligible = [k for k in errors if k == "weight" or check["confidence"][k] >= CONFIDENCE]
    return min(eligible, key=errors.get)


def conv_macs_of(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]]) -> int:
    """MACs of all Conv nodes, counted independently from ONNX shape inference (per batch item)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in m.graph.input:
        if vi.name in input_shapes:
            dims = vi.type.tensor_type.shape.dim
            for d, v in zip(dims, input_shapes[vi.name]):
                d.Clear()
                d.dim_value = v
    m = onnx.shape_inference.infer_shapes(m)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in list(m.graph.value_info) + list(m.graph.output)}
    inits = {t.name: list(t.dims) for t in m.graph.initializer}
    consts = {n.output[0]: list(n.attribute[0].t.dims) for n in m.graph.node if n.op_type == "Constant"}
    total = 0
    for n in m.graph.node:
        if n.op_type != "Conv":
            continue
        w = inits.get(n.input[1]) or consts.get(n.input[1])
        out = shapes[n.output[0]]
        total += int(np.prod(out[1:])) * w[1] * int(np.prod(w[2:]))
    return total


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


SESSION_MARK = "ONEBYONE_TEST_SESSION"


def _leftovers(mark: str) -> list[str]:
    """Command lines of live processes (zombies excluded) that carry this test session's mark in their environment:
    everything the tests started inherits it, whoever its parent is now."""
    found = []
    needle = f"{SESSION_MARK}={mark}".encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{pid}: {cmd[:160]}")
        except OSError:
            continue
    return found


@pytest.fixture(scope="session", autouse=True)
def nothing_left_running():
    """After the whole session (every fixture torn down), no process that a test started (a server, a worker, an
    emulator, a command) is still running."""
    import time
    import uuid

    mark = uuid.uuid4().hex
    os.environ[SESSION_MARK] = mark
    yield
    deadline = time.time() + 10  # processes being stopped get a moment to exit
    left = _leftovers(mark)
    while left and time.time() < deadline:
        time.sleep(0.5)
        left = _leftovers(mark)
    assert not left, "tests left processes running:\n" + "\n".join(left)
