"""An aarch64 board on this machine: qemu user-mode emulation running a TVM RPC server.

`prepare()` builds, once, a cached sysroot from the package registries only: Debian arm64 packages (Python 3.11
and the libraries it needs, unpacked with dpkg -x) and PyPI manylinux aarch64 wheels (apache-tvm, its FFI, numpy,
cloudpickle, psutil). `start()` runs `tvm.exec.rpc_server` under qemu-aarch64 on 127.0.0.1. Facts this relies on
(TVM 0.27): under qemu TVM_USE_RUNTIME_LIB=1 is needed, and the server's forked worker must see sys.executable
pointing at a wrapper that starts the aarch64 Python through qemu.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from onebyone.errors import OneByOneError

DEBS = (
    "python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 libexpat1 zlib1g libffi8 libssl3 libbz2-1.0 "
    "liblzma5 libstdc++6 libgcc-s1 libcrypt1 libuuid1 libtinfo6 libncursesw6 libreadline8 libsqlite3-0 libnsl2 "
    "libtirpc3 libdb5.3 media-types tzdata"
).split()
WHEELS = ("apache-tvm==0.27.*", "apache-tvm-ffi==0.1.14.post1", "numpy>=2.0,<2.6", "cloudpickle", "psutil")
READY = "onebyone-ready-v1"


def cache_root() -> Path:
    """Where the sysroot lives: $ONEBYONE_CACHE or ~/.cache/onebyone."""
    return Path(os.environ.get("ONEBYONE_CACHE", Path.home() / ".cache" / "onebyone"))


def qemu() -> str:
    path = shutil.which("qemu-aarch64")
    if path is None:
        raise OneByOneError("qemu-aarch64 not found; install qemu-user (Debian: apt-get install qemu-user, or bash scripts/setup-cross.sh)")
    return path


def _run(cmd: list[str], what: str, **kw) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        tail = " ".join((proc.stderr or proc.stdout).split())[-300:]
        raise OneByOneError(f"{what} failed: {tail}")


def prepare(root: Path | None = None, log=print) -> Path:
    """The ready aarch64 sysroot folder (built on first use, then reused). Returns the folder."""
    root = (root or cache_root()) / "aarch64"
    if (root / READY).is_file():
        return root
    qemu()
    tmp = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for d in ("lists/partial", "cache/archives/partial", "debs", "wheels", "sysroot", "site"):
        (tmp / d).mkdir(parents=True, exist_ok=True)
    apt = ["apt-get", "-q", "-oAPT::Architecture=arm64", "-oAPT::Architectures=arm64",
           f"-oDir::State::Lists={tmp / 'lists'}", f"-oDir::Cache={tmp / 'cache'}", "-oDebug::NoLocking=1"]
    log("aarch64 sysroot: Debian arm64 package lists…")
    _run(apt + ["update"], "apt-get update (arm64 lists)")
    log("aarch64 sysroot: Python 3.11 and libraries (arm64 .deb)…")
    _run(apt + ["download", *DEBS], "apt-get download (arm64 packages)", cwd=tmp / "debs")
    for deb in sorted((tmp / "debs").glob("*.deb")):
        _run(["dpkg", "-x", str(deb), str(tmp / "sysroot")], f"dpkg -x {deb.name}")
    log("aarch64 sysroot: apache-tvm and numpy (manylinux aarch64 wheels)…")
    _run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--implementation", "cp",
          "--python-version", "3.11", "--platform", "manylinux2014_aarch64", "--platform", "manylinux_2_28_aarch64",
          "--platform", "manylinux_2_17_aarch64", "-d", str(tmp / "wheels"), *WHEELS], "pip download (aarch64 wheels)")
    import zipfile

    for whl in sorted((tmp / "wheels").glob("*.whl")):
        with zipfile.ZipFile(whl) as z:
            z.extractall(tmp / "site")
    shutil.rmtree(tmp / "lists", ignore_errors=True)
    shutil.rmtree(tmp / "cache", ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    os.replace(tmp, root)
    _write_wrapper(root)
    (root / READY).write_text("ok\n")
    return root


def _write_wrapper(root: Path) -> Path:
    wrapper = root / "python-aarch64"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'export PYTHONPATH="{root / "site"}" TVM_USE_RUNTIME_LIB=1\n'
        f'exec "{qemu()}" -L "{root / "sysroot"}" "{root / "sysroot/usr/bin/python3.11"}" "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


START_LIMIT_S = 900.0  # starting Python and TVM under qemu takes ~5 s idle, minutes on a loaded machine


def start(port: int = 9190, root: Path | None = None, timeout: float = START_LIMIT_S, log=None,
          tracker: str | None = None, key: str = "emulated-aarch64") -> subprocess.Popen:
    """Start the emulated RPC server on 127.0.0.1:port (in a process group of its own: stop it with
    runtime.processes.stop_group) and wait until it accepts connections; with `tracker` (HOST:PORT of a TVM RPC
    tracker) it also registers there under `key`, as a board of a farm does. The sysroot must be ready (`prepare`):
    building it and starting the server are separate steps with separate limits. `log` gets a line every 15 s
    while the server starts. On failure the whole group is ended and OneByOneError names the port."""
    from onebyone.runtime.processes import group_listens, listening, start_group, stop_group

    sysroot = (root or cache_root()) / "aarch64"
    if not (sysroot / READY).is_file():
        raise OneByOneError(f"the aarch64 sysroot is not built at {sysroot}: run `onebyone emulate aarch64` once "
                            "(it builds it first)")
    if listening("127.0.0.1", port):
        raise OneByOneError(f"127.0.0.1:{port} is already in use; choose another --port")
    wrapper = _write_wrapper(sysroot)
    boot = (
        "import sys, runpy\n"
        f"sys.executable = {str(wrapper)!r}\n"
        f"sys.argv = ['rpc_server', '--host', '127.0.0.1', '--port', '{port}', '--port-end', '{port + 1}'"
        + (f", '--tracker', {tracker!r}, '--key', {key!r}" if tracker else "") + "]\n"
        "runpy.run_module('tvm.exec.rpc_server', run_name='__main__')\n"
    )
    logfile = tempfile.TemporaryFile(mode="w+")  # the server's output, read back only when it fails
    proc = start_group([str(wrapper), "-c", boot], stdout=logfile, stderr=subprocess.STDOUT, text=True)
    t0 = time.monotonic()
    next_note = t0 + 15
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            stop_group(proc)
            logfile.seek(0)
            raise OneByOneError(f"the emulated RPC server for 127.0.0.1:{port} exited: "
                                f"{' '.join(logfile.read().split())[-300:]}")
        if group_listens(proc.pid, port):
            return proc
        if log and time.monotonic() > next_note:
            log(f"starting the emulated board on 127.0.0.1:{port} ({time.monotonic() - t0:.0f} s)…")
            next_note += 15
        time.sleep(0.5)
    stop_group(proc)
    raise OneByOneError(f"the emulated RPC server did not listen on 127.0.0.1:{port} within {timeout:.0f} s "
                        "(stopped it; a loaded machine starts it slowly: retry, or raise the limit)")
