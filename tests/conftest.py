from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

from helpers import EXAMPLES, archive_model, child_pids, pid_alive, start_server

EXIT_GRACE_SECONDS = 10


@pytest.fixture(autouse=True)
def no_leaked_processes():
    """Every test must leave no process of its own running.

    Processes are this pytest's children (servers, tools): only those, so other servers on
    the machine do not count. A server's workers and frontends die with it, which
    tests/test_shutdown.py shows; its channels are anonymous memory that goes with them.
    """
    children = live_children()
    yield
    deadline = time.monotonic() + EXIT_GRACE_SECONDS
    while (left := live_children() - children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"processes left running: {sorted(left)}"


def live_children() -> set[int]:
    return {pid for pid in child_pids(os.getpid()) if pid_alive(pid)}


@pytest.fixture(scope="session")
def model_store(tmp_path_factory) -> Path:
    """A model store with the example archives, made by torch-model-archiver."""
    store = tmp_path_factory.mktemp("model_store")
    archive_model(store, "echo", EXAMPLES / "echo" / "echo_handler.py")
    return store


@pytest.fixture(scope="session")
def hazards_store(tmp_path_factory) -> Path:
    """hazards.mar: echoes, or crashes, sleeps or answers big as the body asks."""
    store = tmp_path_factory.mktemp("hazards_store")
    archive_model(store, "hazards", Path(__file__).resolve().parent / "handlers" / "hazards.py")
    return store


@pytest.fixture(scope="module")
def echo_server(model_store, tmp_path_factory):
    """A pyserve serving echo.mar, shared by one test module."""
    server = start_server(tmp_path_factory.mktemp("echo"), model_store, ["echo=echo.mar"])
    yield server
    server.stop()


@pytest.fixture
def api(server):
    """A client of the management API of the test module's `server` fixture."""
    with httpx.Client(base_url=server.management_url, timeout=120) as client:
        yield client
