"""Running packages on a remote device (a board, or the qemu emulator) over TVM RPC."""

from __future__ import annotations

import numpy as np

from onebyone.errors import OneByOneError
from onebyone.runtime.package import as_outputs, device_args, read_manifest


def parse_address(text: str, option: str = "--rpc") -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise OneByOneError(f"{option} {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9190")
    return host, int(port)


def rpc_failure(address: str, exc: BaseException) -> OneByOneError:
    """One line naming the server and what went wrong (refused, timed out, session expired, cannot load)."""
    text = " ".join(str(exc).split())
    kind = type(exc).__name__
    if "SessionTimeout" in kind or "session" in text.lower() and "timeout" in text.lower():
        why = "the RPC session timed out"
    elif "Failed to load" in text or "cannot open shared object" in text or "wrong ELF class" in text:
        why = "the device cannot load the package (built for another CPU or GPU?): " + text.split("Failed to load", 1)[-1][:200]
    elif "Connection refused" in text or "connect" in text.lower():
        why = "the connection failed (is it still running?)"
    else:
        why = f"{kind}: {text[:250]}"
    return OneByOneError(f"TVM RPC server {address}: {why}")


class Remote:
    """A connection to a TVM RPC server; every failure is a one-line OneByOneError naming the server.

    `session_timeout` (seconds, 0: none) bounds a whole session; by default there is none, so slow devices and
    loaded machines are not cut off (a server that dies is still reported)."""

    def __init__(self, address: str, session_timeout: int = 0, session=None) -> None:
        from tvm import rpc

        self.address = address
        self._loaded: dict[str, tuple] = {}
        if session is not None:  # a session handed out by a tracker (runtime.pool)
            self.session = session
            return
        host, port = parse_address(address)
        try:
            self.session = rpc.connect(host, port, session_timeout=session_timeout)
        except Exception:  # noqa: BLE001 - TVM raises an InternalError with a C++ trace
            raise OneByOneError(f"cannot reach the TVM RPC server at {address} (is it running? `onebyone emulate aarch64`)") from None

    def close(self) -> None:
        """Drop the session and everything loaded through it (the server ends its session when they are freed)."""
        self._loaded.clear()
        self.session = None

    def num_threads(self) -> int:
        """How many threads the device's TVM runtime runs kernels on (its cores, unless TVM_NUM_THREADS says)."""
        return int(self.session.get_function("runtime.NumThreads")())

    def vm(self, path):
        """(manifest, remote VM, remote device) for a package, uploaded and loaded once per session."""
        key = str(path)
        if key not in self._loaded:
            try:
                self._loaded[key] = self._load(path)
            except OneByOneError:
                raise
            except Exception as exc:  # noqa: BLE001 - TVM raises many types over RPC
                raise rpc_failure(self.address, exc) from None
        return self._loaded[key]

    def _load(self, path):
        from tvm import relax

        manifest = read_manifest(path)
        lib_path = f"{path}/{manifest['library']}"
        remote_name = f"onebyone-{manifest['source_model_sha256'][:12]}.so"
        self.session.upload(lib_path, remote_name)
        lib = self.session.load_module(remote_name)
        dev = self.session.device(manifest["device"], 0)
        return manifest, relax.VirtualMachine(lib, dev), dev

    def run_package(self, path, samples: list[dict]) -> dict[str, list[np.ndarray]]:
        """Upload the package's library, load it remotely, run every sample, fetch outputs by name."""
        manifest, vm, dev = self.vm(path)
        names = [o["name"] for o in manifest["outputs"]]
        outs: dict[str, list[np.ndarray]] = {n: [] for n in names}
        try:
            for feed in samples:
                for n, r in zip(names, as_outputs(vm["main"](*device_args(manifest, feed, dev)))):
                    outs[n].append(r.numpy())
        except Exception as exc:  # noqa: BLE001
            raise rpc_failure(self.address, exc) from None
        return outs

    def runner(self, path, feed: dict):
        """A callable that runs the package once on the device with `feed` kept there, and waits for it (the unit that
        latency.timer.compare times); failures are one-line OneByOneErrors naming the server."""
        manifest, vm, dev = self.vm(path)
        try:
            args = device_args(manifest, feed, dev)
            main = vm["main"]
        except Exception as exc:  # noqa: BLE001
            raise rpc_failure(self.address, exc) from None

        def run():
            try:
                main(*args)
                dev.sync()
            except Exception as exc:  # noqa: BLE001
                raise rpc_failure(self.address, exc) from None

        return run

    def time_package(self, path, feed: dict, repeat: int = 5) -> dict[str, float]:
        """Wall-clock milliseconds of remote calls with inputs and outputs kept on the device (one RPC round trip
        each; TVM's remote time_evaluator on a Relax VM hangs the server in TVM 0.27, so it is not used)."""
        import time

        run = self.runner(path, feed)
        run()  # warm-up
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        r = np.asarray(times) * 1e3
        return {"median_ms": float(np.median(r)), "mean_ms": float(r.mean()), "min_ms": float(r.min()), "max_ms": float(r.max())}
