"""Devices to measure on: one TVM RPC server (`--rpc HOST:PORT`), or every free device registered under one key
with a TVM RPC tracker (`--rpc-tracker HOST:PORT --device-key KEY`), the way board farms are run with TVM."""

from __future__ import annotations

import queue
from concurrent.futures import ThreadPoolExecutor

from onebyone.errors import OneByOneError
from onebyone.runtime.remote import Remote, parse_address, rpc_failure


class DevicePool:
    """Remote devices (each a runtime.remote.Remote) of one kind; `spread` runs work items on them in parallel, each
    item wholly on one device (so that what it compares is measured side by side on one board)."""

    def __init__(self, remotes: list[Remote], label: str) -> None:
        if not remotes:
            raise OneByOneError(f"{label}: no device")
        self.remotes = remotes
        self.label = label

    @classmethod
    def server(cls, address: str) -> DevicePool:
        """The one device behind a TVM RPC server."""
        return cls([Remote(address)], address)

    @classmethod
    def tracker(cls, address: str, key: str, limit: int = 8) -> DevicePool:
        """Up to `limit` devices registered under `key` with the TVM RPC tracker at `address` (every free one; at
        least one, waited for when all are busy). One-line OneByOneError when the tracker cannot be reached or knows
        no device of that key."""
        from tvm import rpc

        from onebyone.runtime.processes import listening

        host, port = parse_address(address, "--rpc-tracker")
        label = f"tracker {address} key {key!r}"
        if not listening(host, port):  # TVM's client would retry for a minute, logging every 5 s
            raise OneByOneError(f"cannot reach the TVM RPC tracker at {address} (is `python -m tvm.exec.rpc_tracker` "
                                "running?)")
        try:
            client = rpc.connect_tracker(host, port)
            summary = client.summary()
        except Exception:  # noqa: BLE001 - TVM raises several types for a dead tracker
            raise OneByOneError(f"cannot reach the TVM RPC tracker at {address} (is `python -m tvm.exec.rpc_tracker` "
                                "running?)") from None
        queues = summary.get("queue_info", {})
        if key not in queues:
            known = ", ".join(sorted(queues)) or "none"
            raise OneByOneError(f"{label}: no device registered under that key (keys: {known})")
        count = max(1, min(limit, int(queues[key].get("free", 0))))
        remotes = []
        for i in range(count):
            try:
                session = client.request(key, priority=1, session_timeout=0)
            except Exception as exc:  # noqa: BLE001
                raise rpc_failure(label, exc) from None
            remotes.append(Remote(f"{address}/{key}#{i}", session=session))
        return cls(remotes, label)

    def close(self) -> None:
        """End the sessions, so that a tracker hands the devices to the next client."""
        import gc

        for r in self.remotes:
            r.close()
        gc.collect()

    def __len__(self) -> int:
        return len(self.remotes)

    def num_threads(self) -> int:
        """The threads the first device's TVM runtime runs kernels on (a pool holds one kind of device)."""
        return self.remotes[0].num_threads()

    def spread(self, items: list, work) -> list:
        """[work(item, remote)] in the order of `items`, the items spread over the pool's devices (one at a time per
        device)."""
        if len(self.remotes) == 1:
            return [work(item, self.remotes[0]) for item in items]
        free: queue.Queue = queue.Queue()
        for r in self.remotes:
            free.put(r)

        def one(item):
            remote = free.get()
            try:
                return work(item, remote)
            finally:
                free.put(remote)

        with ThreadPoolExecutor(max_workers=len(self.remotes)) as ex:
            return list(ex.map(one, items))
