"""pyserve in an ordinary container: Docker gives /dev/shm 64 MiB, and that is no limit,
because worker channels are anonymous memory (memfd) that pyserve never puts in /dev/shm.

The server runs in a mount namespace of its own whose /dev/shm is a 64 MiB tmpfs, as in
`docker run` without --shm-size; that needs root, as CI has.
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from helpers import start_server

MiB = 1024 * 1024
SMALL_SHM = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             'mount -t tmpfs -o size=64m tmpfs /dev/shm && exec "$@"', "sh"]

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                                reason="a mount namespace needs root and unshare")


def test_five_models_with_two_workers_each_serve_1_mib_bodies_with_a_64_mib_dev_shm(model_store, tmp_path):
    server = start_server(tmp_path, model_store, [f"echo{n}=echo.mar" for n in range(5)],
                          launcher=SMALL_SHM, default_workers_per_model=2)
    try:
        shm = f"/proc/{server.process.pid}/root/dev/shm"
        usage = os.statvfs(shm)
        assert usage.f_blocks * usage.f_frsize == 64 * MiB  # the server sees the small /dev/shm
        body = os.urandom(MiB)

        def predict(n: int) -> tuple[int, bool]:
            reply = httpx.post(f"{server.inference_url}/predictions/echo{n % 5}", content=body,
                               headers={"content-type": "application/octet-stream"}, timeout=60)
            return reply.status_code, reply.content == body

        with ThreadPoolExecutor(10) as pool:
            answers = list(pool.map(predict, range(200)))
        assert answers == [(200, True)] * 200
        assert server.process.poll() is None
        assert os.listdir(shm) == []
    finally:
        assert server.stop() == 0
