"""Starting a worker is all or nothing: when descriptors run out mid-start, the scale call
says why, no phantom worker stays registered, and the server still stops at once.

The server's open-file limit is lowered while it runs (prlimit), to a few descriptors above
what it holds, so that a worker start fails at each of its steps in turn: its channel's
memfds and eventfds, the process's pipes, its pidfd.
"""

from __future__ import annotations

import os
import resource
import time

import httpx
import pytest

from helpers import pid_alive, start_server, wait_until


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def described_workers(api: httpx.Client) -> list[dict]:
    return api.get("/models/echo").json()[0]["workers"]


@pytest.mark.parametrize("spare", [0, 1, 2, 3, 4, 5, 6, 7])
def test_a_worker_that_cannot_start_leaves_nothing_registered(model_store, tmp_path, spare):
    server = start_server(tmp_path, model_store, ["echo=echo.mar"], default_workers_per_model=1)
    pid = server.process.pid
    original = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    api = httpx.Client(base_url=server.management_url, timeout=60)  # connected before the limit
    try:
        before = described_workers(api)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (open_fds(pid) + spare, original[1]))
        scaled = api.put("/models/echo", params={"min_worker": 4, "synchronous": "true"})
        resource.prlimit(pid, resource.RLIMIT_NOFILE, original)
        if scaled.status_code != 200:
            assert scaled.status_code == 500
            assert "Too many open files" in scaled.json()["message"]
        # Workers that did start load as usual; none is left STARTING without a process.
        wait_until(lambda: {w["status"] for w in described_workers(api)} == {"READY"})
        workers = described_workers(api)
        assert all(pid_alive(w["pid"]) for w in workers)
        assert len(workers) >= len(before)
        again = api.put("/models/echo", params={"min_worker": 2, "synchronous": "true"})
        assert again.status_code == 200
        reply = httpx.post(f"{server.inference_url}/predictions/echo", content=b"still here", timeout=30)
        assert reply.content == b"still here"
    finally:
        api.close()
        resource.prlimit(pid, resource.RLIMIT_NOFILE, original)
        started = time.monotonic()
        assert server.stop(timeout=30) == 0
    assert time.monotonic() - started < 20  # no wait for a worker that never ran
