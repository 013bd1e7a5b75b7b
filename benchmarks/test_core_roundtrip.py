"""The core round trip without HTTP: submit -> batch -> shared memory -> worker -> result.

A real worker process (`python -m pyserve.worker`, the echo example handler) and the real
scheduler; the benchmark thread submits one request and waits on the notify fd for the
answer, as the event loop would. Run with:

    pytest benchmarks/test_core_roundtrip.py --benchmark-only
"""

from __future__ import annotations

import itertools
import os
import select
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from pyserve import _core, protocol

ECHO = Path(__file__).resolve().parent.parent / "examples" / "echo" / "echo_handler.py"


def wait_for(scheduler, kind: int) -> None:
    while True:
        if not select.select([scheduler.notify_fd], [], [], 30)[0]:
            raise TimeoutError("no answer from the worker")
        if any(k == kind for _, k, _ in scheduler.take_completions()):
            return


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("echo")
    shutil.copy(ECHO, model_dir)
    scheduler = _core.Scheduler(f"/pyserve.bench-{uuid.uuid4().hex[:8]}", 1 << 20)
    scheduler.add_model(1, 1, 0, 1000)
    load = protocol.encode_load({"model_name": "echo", "model_version": "1.0",
                                 "model_dir": str(model_dir), "handler": "echo_handler",
                                 "manifest": {}, "batch_size": 1})
    requests, responses = scheduler.add_worker(1, 1, load)
    worker = subprocess.Popen(
        [sys.executable, "-P", "-m", "pyserve.worker", "--requests", requests, "--responses",
         responses, "--doorbell", scheduler.doorbell_name, "--parent-pid", str(os.getpid())],
        cwd=model_dir, env=dict(os.environ, PYTHONPATH=str(model_dir)),
    )
    wait_for(scheduler, protocol.LOADED)
    yield scheduler
    scheduler.stop_worker(1)
    worker.wait(30)
    scheduler.worker_exited(1)
    scheduler.close()


def test_core_round_trip(benchmark, scheduler):
    ids = itertools.count(1)
    payload = protocol.encode_request(0, "bench", "application/octet-stream", [], b"x" * 64)

    def round_trip():
        scheduler.submit(1, next(ids), payload)
        wait_for(scheduler, protocol.RESULTS)

    benchmark.pedantic(round_trip, rounds=3000, warmup_rounds=300)
    median_us = benchmark.stats.stats.median * 1e6
    print(f"\ncore round trip p50: {median_us:.1f} us (target: <= 30 us)")
