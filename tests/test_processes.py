"""Server process groups: a listener is found without connecting to it, and stopping the group ends it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

from onebyone.runtime.processes import free_port, group_alive, group_listens, listening, start_group, stop_group

SERVER = textwrap.dedent("""
    import socket, sys
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen()
    print("ready", flush=True)
    while True:
        c, _ = s.accept()
        print("accepted", flush=True)
        c.close()
""")


def test_a_listener_is_seen_without_a_connection(tmp_path):
    port = free_port()
    log = tmp_path / "log"
    with log.open("w") as out:
        proc = start_group([sys.executable, "-c", SERVER, str(port)], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not group_listens(proc.pid, port):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert not group_listens(proc.pid, free_port())
        time.sleep(0.3)
        assert "accepted" not in log.read_text()  # seen from the process table: the server took no connection
        assert listening("127.0.0.1", port)  # the connecting probe, by contrast, is accepted
        deadline = time.monotonic() + 30
        while "accepted" not in log.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        stop_group(proc)
    assert not group_alive(proc.pid) and not group_listens(proc.pid, port)
