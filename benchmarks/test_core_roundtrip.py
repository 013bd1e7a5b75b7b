"""The core round trip without HTTP: submit -> batcher -> channel -> worker -> result.

A real worker process (`python -m pyserve.worker`, the echo example handler) and the real
core; the benchmark thread submits one request and waits on the notify fd for the answer,
as the event loop would. Run with:

    pytest benchmarks/test_core_roundtrip.py --benchmark-only
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pyserve import _core, frames

ECHO = Path(__file__).resolve().parent.parent / "examples" / "echo" / "echo_handler.py"


def wait_for(core, done) -> None:
    while True:
        if not select.select([core.notify_fd], [], [], 30)[0]:
            raise TimeoutError("no answer from the worker")
        replies, events = core.take()
        if done(replies, events):
            return


@pytest.fixture(scope="module")
def core(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("echo")
    shutil.copy(ECHO, model_dir)
    core = _core.Core(1 << 20)
    core.add_model(1, 1, 0, 1000)
    load = frames.encode_load({"model_name": "echo", "model_version": "1.0",
                               "model_dir": str(model_dir), "handler": "echo_handler",
                               "manifest": {}, "batch_size": 1})
    fds = core.add_worker(1, 1, load)
    worker = subprocess.Popen(
        [sys.executable, "-P", "-m", "pyserve.worker", "--channel", ",".join(map(str, fds)),
         "--parent-pid", str(os.getpid())],
        cwd=model_dir, env=dict(os.environ, PYTHONPATH=str(model_dir)), pass_fds=fds,
    )
    wait_for(core, lambda replies, events: any(kind == frames.LOADED for _, kind, _ in events))
    yield core
    core.stop_worker(1)
    worker.wait(30)
    core.worker_exited(1, False, (500, ""), (500, ""), (500, ""))
    core.close()


def test_core_round_trip(benchmark, core):
    # One request at a time, so one id serves them all: the core checks each answer's id
    # against its batch.
    payload = frames.encode_request(1, "bench", "application/octet-stream", [], b"x" * 64)

    def round_trip():
        core.submit(1, 1, payload)
        wait_for(core, lambda replies, events: replies)

    benchmark.pedantic(round_trip, rounds=3000, warmup_rounds=300)
    median_us = benchmark.stats.stats.median * 1e6
    print(f"\ncore round trip p50: {median_us:.1f} us (target: <= 30 us)")
