"""Server processes that leave nothing behind: each starts in a process group of its own, and stopping it ends the
whole group (a TVM RPC server forks workers; ending only the server leaves them listening)."""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import time

_running: set[int] = set()  # groups this process started and has not stopped


def start_group(cmd: list[str], **kwargs) -> subprocess.Popen:
    """Popen(cmd) as the leader of a new process group, ended by stop_group (and at this process's exit)."""
    proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
    _running.add(proc.pid)
    return proc


def group_alive(pgid: int) -> bool:
    """Whether any process of the group is still running (zombies of this process excluded)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # the leader may be our own zombie while the rest of the group is gone
        os.waitpid(pgid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return _members(pgid) > 0


def _members(pgid: int) -> int:
    """Live (not zombie) processes in the group, read from /proc (1 when /proc cannot tell)."""
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return 1
    count = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            count += 1
    return count


def group_listens(pgid: int, port: int) -> bool:
    """Whether a process of the group listens on TCP `port`, read from the process table without connecting (a
    connection a TVM RPC server accepts and drops makes it re-register with its tracker, so probing a board with a
    connect briefly takes it out of the tracker's pool)."""
    import psutil

    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) != pgid:
                continue
            conns = proc.net_connections(kind="tcp") if hasattr(proc, "net_connections") else proc.connections("tcp")
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
        if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in conns):
            return True
    return False


def stop_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """End every process of `proc`'s group: SIGTERM, then SIGKILL for what is left after `grace` seconds."""
    pgid = proc.pid
    _running.discard(pgid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and group_alive(pgid):
            time.sleep(0.05)
        if not group_alive(pgid):
            break
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass


def _stop_all() -> None:
    for pgid in list(_running):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _running.clear()


atexit.register(_stop_all)


def listening(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on host:port. (A connect to a free port in the ephemeral range can
    succeed by connecting the socket to itself, TCP's simultaneous open; that is not a listener.)"""
    with socket.socket() as s:
        s.settimeout(0.5)
        if s.connect_ex((host, port)) != 0:
            return False
        return s.getsockname() != s.getpeername()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
