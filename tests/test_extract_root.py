"""Each server extracts archives into pyserve-models-<pid>-* in the temp folder and holds a
lock on it; a start removes the folders nobody holds any more (a SIGKILLed server's)."""

from __future__ import annotations

import fcntl
import os
import tempfile

import pytest

from helpers import child_pids, pid_alive, start_server, wait_until
from pyserve.engine.extract_root import make_extract_root, remove_abandoned


def extract_folders(directory, pid: int) -> list:
    return sorted(directory.glob(f"pyserve-models-{pid}-*"))


def test_a_killed_servers_extracted_models_are_removed_at_the_next_start(model_store, tmp_path):
    killed = start_server(tmp_path, model_store, ["echo=echo.mar"])
    workers = child_pids(killed.process.pid)
    [left] = extract_folders(tmp_path, killed.process.pid)
    assert any(left.rglob("MANIFEST.json"))
    killed.process.kill()
    killed.process.wait()
    wait_until(lambda: not any(pid_alive(pid) for pid in workers))
    assert left.exists()  # nobody removed it: the server had no chance

    server = start_server(tmp_path, model_store, ["echo=echo.mar"])
    try:
        assert not left.exists()
        assert len(extract_folders(tmp_path, server.process.pid)) == 1
    finally:
        server.stop()
    assert extract_folders(tmp_path, server.process.pid) == []  # a stop removes its own


@pytest.fixture
def temp_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def test_the_folder_of_a_running_server_is_kept(temp_folder):
    root, lock = make_extract_root()
    try:
        remove_abandoned(temp_folder)
        assert root.is_dir() and root.name.startswith(f"pyserve-models-{os.getpid()}-")
    finally:
        os.close(lock)


def test_a_folder_nobody_holds_is_removed(temp_folder):
    abandoned = temp_folder / "pyserve-models-123-abcdef"
    (abandoned / "model").mkdir(parents=True)
    remove_abandoned(temp_folder)
    assert not abandoned.exists()


def test_a_folder_that_is_held_is_kept_whoever_holds_it(temp_folder):
    held = temp_folder / "pyserve-models-123-abcdef"
    held.mkdir()
    descriptor = os.open(held, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    try:
        remove_abandoned(temp_folder)
        assert held.is_dir()
    finally:
        os.close(descriptor)


@pytest.mark.parametrize("name", ["pyserve-models-abcdef", "pyserve-models-", "other-123-x"])
def test_folders_not_named_after_a_pid_are_left_alone(temp_folder, name):
    (temp_folder / name).mkdir()
    remove_abandoned(temp_folder)
    assert (temp_folder / name).is_dir()


def test_a_symlink_with_such_a_name_is_not_followed(temp_folder):
    target = temp_folder / "precious"
    (target / "inside").mkdir(parents=True)
    (temp_folder / "pyserve-models-123-abcdef").symlink_to(target)
    remove_abandoned(temp_folder)
    assert (target / "inside").is_dir()


@pytest.mark.skipif(os.getuid() != 0, reason="giving a folder to another user needs root")
def test_another_users_folder_is_left_alone(temp_folder):
    theirs = temp_folder / "pyserve-models-123-abcdef"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    remove_abandoned(temp_folder)
    assert theirs.is_dir()
