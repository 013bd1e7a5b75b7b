"""Where workers run, seen from outside: their environment and CPU affinity, on a real server.

There is no GPU here, so a fake nvidia-smi on PATH reports two: the assignment logic is the
real one, only the device count is faked.
"""

from __future__ import annotations

import os

import httpx

from helpers import HANDLERS, EXAMPLES, archive_model, child_pids, start_server


def environ_of(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as file:
        entries = file.read().split(b"\0")
    return dict(entry.decode().split("=", 1) for entry in entries if b"=" in entry)


def workers_of(server) -> list[int]:
    return sorted(child_pids(server.process.pid))


def test_gpu_workers_get_one_gpu_each_round_robin(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho '0, GPU-aaaa'\necho '1, GPU-bbbb'\n")
    (fake / "nvidia-smi").chmod(0o755)
    store = tmp_path / "store"
    archive_model(store, "probe", HANDLERS / "yaml_probe.py")
    env = {"PATH": f"{fake}:{os.environ['PATH']}"}
    server = start_server(tmp_path, store, ["probe=probe.mar"], env=env, default_workers_per_model=3)
    try:
        devices = sorted(environ_of(pid)["CUDA_VISIBLE_DEVICES"] for pid in workers_of(server))
        gpu_ids = {httpx.post(f"{server.inference_url}/predictions/probe", content=b"x", timeout=60)
                   .json()["system_properties"]["gpu_id"] for _ in range(3)}
        described = httpx.get(f"{server.management_url}/models/probe", timeout=60).json()[0]
    finally:
        server.stop()
    assert devices == ["0", "0", "1"]
    assert gpu_ids == {0}  # each worker sees its one GPU as cuda:0
    assert described["deviceType"] == "gpu"
    assert all(worker["gpu"] for worker in described["workers"])


def test_cpu_workers_are_pinned_to_their_own_cores(tmp_path):
    cores = sorted(os.sched_getaffinity(0))
    store = tmp_path / "store"
    archive_model(store, "echo", EXAMPLES / "echo" / "echo_handler.py")
    server = start_server(tmp_path, store, ["echo=echo.mar"], default_workers_per_model=len(cores))
    try:
        affinities = [os.sched_getaffinity(pid) for pid in workers_of(server)]
        threads = {environ_of(pid)["OMP_NUM_THREADS"] for pid in workers_of(server)}
    finally:
        server.stop()
    assert sorted(core for affinity in affinities for core in affinity) == cores  # one core each
    assert threads == {"1"}
