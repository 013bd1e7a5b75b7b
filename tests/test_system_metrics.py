"""System metrics: collected by the server every metric_time_interval seconds with TorchServe's
names, units and dimensions, and not at all with disable_system_metrics."""

from __future__ import annotations

import itertools
import re
import shutil
import socket
import time

import pytest
from helpers import start_server, wait_until

from pyserve.system_metrics import SystemMetrics

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d,\d{3}"
UNITS = {"CPUUtilization": "Percent", "DiskAvailable": "Gigabytes", "DiskUsage": "Gigabytes",
         "DiskUtilization": "Percent", "MemoryAvailable": "Megabytes", "MemoryUsed": "Megabytes",
         "MemoryUtilization": "Percent"}
HOST = re.escape(socket.gethostname())


def system_lines(tmp_path) -> list[re.Match]:
    text = (tmp_path / "logs" / "ts_metrics.log").read_text()
    return list(re.finditer(rf"^({STAMP}) - (\w+)\.(\w+):([\d.E-]+)\|#Level:Host\|#hostname:{HOST},"
                            rf"timestamp:(\d+)$", text, re.MULTILINE))


def test_system_metrics_are_written_every_interval_with_torchserve_names_and_units(tmp_path):
    server = start_server(tmp_path, tmp_path, [], metrics_mode="log", metric_time_interval=1)
    try:
        wait_until(lambda: sum(m[2] == "CPUUtilization" for m in system_lines(tmp_path)) >= 3,
                   timeout=10)
    finally:
        server.stop()
    found = system_lines(tmp_path)
    assert {(m[2], m[3]) for m in found} == set(UNITS.items())
    collected = sorted(int(m[5]) for m in found if m[2] == "CPUUtilization")
    assert all(1 <= later - earlier <= 2 for earlier, later in itertools.pairwise(collected))


def test_disable_system_metrics_collects_none(tmp_path):
    server = start_server(tmp_path, tmp_path, [], metrics_mode="log", metric_time_interval=1,
                          disable_system_metrics="true")
    try:
        time.sleep(1.5)
    finally:
        server.stop()
    assert system_lines(tmp_path) == []


def test_TS_DISABLE_SYSTEM_METRICS_disables_them_when_env_vars_are_read(tmp_path):
    server = start_server(tmp_path, tmp_path, [], metrics_mode="log", metric_time_interval=1,
                          env={"TS_ENABLE_ENVVARS_CONFIG": "true", "TS_DISABLE_SYSTEM_METRICS": "true"})
    try:
        time.sleep(1.5)
    finally:
        server.stop()
    assert system_lines(tmp_path) == []


def test_memory_and_disk_add_up_as_psutil_reports_them():
    samples = {sample.name: sample.value for sample in SystemMetrics().collect()}
    with open("/proc/meminfo") as meminfo:
        total_mb = int(meminfo.readline().split()[1]) / 1024
    assert samples["MemoryUsed"] + samples["MemoryAvailable"] == pytest.approx(total_mb)
    assert samples["MemoryUtilization"] == round(samples["MemoryUsed"] / total_mb * 100, 1)
    used, free = samples["DiskUsage"], samples["DiskAvailable"]
    assert samples["DiskUtilization"] == round(used / (used + free) * 100, 1)
    assert 0 <= samples["CPUUtilization"] <= 100


@pytest.mark.skipif(shutil.which("nvidia-smi") is None, reason="needs an NVIDIA GPU")
def test_each_gpu_has_its_metrics_with_a_device_id():
    samples = SystemMetrics(gpus=["0"]).collect()
    gpu = [(s.name, s.unit, s.dimensions) for s in samples if s.name.startswith("GPU")]
    dimensions = (("Level", "Host"), ("DeviceId", "0"))
    assert gpu == [("GPUMemoryUtilization", "Percent", dimensions),
                   ("GPUMemoryUsed", "Megabytes", dimensions),
                   ("GPUUtilization", "Percent", dimensions)]
