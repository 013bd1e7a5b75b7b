from __future__ import annotations

from pathlib import Path

import pytest

from helpers import EXAMPLES, archive_model, shm_segments, start_server


@pytest.fixture(autouse=True)
def no_leaked_segments():
    """Every test must leave /dev/shm as it found it."""
    before = shm_segments()
    yield
    leaked = shm_segments() - before
    assert not leaked, f"shared-memory segments left behind: {sorted(leaked)}"


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
