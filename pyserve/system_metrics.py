"""TorchServe's system metrics: CPU, memory and disk of the host, and its GPUs where it has any.

TorchServe (ts/metrics/system_metrics.py) reads them with psutil every metric_time_interval
seconds; pyserve reads the same numbers from /proc and statvfs with psutil's Linux formulas,
so it needs no extra package, and asks nvidia-smi for the GPUs, as the engine does to find
them. Names, units and dimensions are TorchServe's (ts/configs/metrics.yaml), and so is the
order (GPUs first, then the rest by name, as TorchServe's module walks its functions).
GPUUtilization and GPUMemoryUtilization are NVML's utilization rates, which TorchServe reads
through torch.cuda.utilization and torch.cuda.memory_usage; DeviceId counts the GPUs this
server uses from 0, as torch numbers the visible ones.

Collecting reads files and may run nvidia-smi: call `collect` off the event loop.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

MB = 1024 * 1024
GB = 1024 * MB
HOST = (("Level", "Host"),)
NVIDIA_SMI_TIMEOUT = 10.0


@dataclass(frozen=True)
class Sample:
    name: str
    unit: str  # as TorchServe's metrics.yaml names it: Percent, Megabytes, Gigabytes
    value: float
    dimensions: tuple[tuple[str, str], ...] = HOST


def percent(part: float, whole: float) -> float:
    """psutil's usage_percent(..., round_=1)."""
    return round(part / whole * 100, 1) if whole > 0 else 0.0


class SystemMetrics:
    def __init__(self, gpus: list[str] | tuple[str, ...] = (), proc: Path = Path("/proc"),
                 disk: str = "/"):
        """`gpus`: the nvidia-smi indices of the GPUs this server uses."""
        self.gpus = list(gpus)
        self.proc = proc
        self.disk = disk
        self._cpu_times = self._read_cpu_times()  # CPUUtilization covers the time since

    def collect(self) -> list[Sample]:
        return [*self.gpu_samples(), self.cpu_utilization(), *self.disk_samples(),
                *self.memory_samples()]

    # -- CPU --------------------------------------------------------------------------

    def _read_cpu_times(self) -> tuple[float, float]:
        """(busy, total) jiffies of all CPUs, as psutil counts them: guest time is already in
        user time, and iowait is idle."""
        with open(self.proc / "stat") as stat:  # cpu user nice system idle iowait ... guest guest_nice
            fields = [int(value) for value in stat.readline().split()[1:11]]
        fields += [0] * (10 - len(fields))
        idle, iowait, guest, guest_nice = fields[3], fields[4], fields[8], fields[9]
        total = sum(fields) - guest - guest_nice
        return total - idle - iowait, total

    def cpu_utilization(self) -> Sample:
        busy, total = self._read_cpu_times()
        last_busy, last_total = self._cpu_times
        self._cpu_times = (busy, total)
        return Sample("CPUUtilization", "Percent", percent(max(busy - last_busy, 0), total - last_total))

    # -- memory -----------------------------------------------------------------------

    def memory_samples(self) -> list[Sample]:
        info = {}
        with open(self.proc / "meminfo") as meminfo:
            for line in meminfo:
                name, _, rest = line.partition(":")
                info[name] = int(rest.split()[0]) * 1024
        total, free = info["MemTotal"], info["MemFree"]
        available = info.get("MemAvailable") or free  # psutil 7: used is what is not available
        if available > total:
            available = free
        return [
            Sample("MemoryAvailable", "Megabytes", available / MB),
            Sample("MemoryUsed", "Megabytes", (total - available) / MB),
            Sample("MemoryUtilization", "Percent", percent(total - available, total)),
        ]

    # -- disk -------------------------------------------------------------------------

    def disk_samples(self) -> list[Sample]:
        stat = os.statvfs(self.disk)
        used = (stat.f_blocks - stat.f_bfree) * stat.f_frsize
        free = stat.f_bavail * stat.f_frsize
        return [
            Sample("DiskAvailable", "Gigabytes", free / GB),
            Sample("DiskUsage", "Gigabytes", used / GB),
            Sample("DiskUtilization", "Percent", percent(used, used + free)),
        ]

    # -- GPUs -------------------------------------------------------------------------

    def gpu_samples(self) -> list[Sample]:
        nvidia_smi = shutil.which("nvidia-smi") if self.gpus else None
        if nvidia_smi is None:
            return []
        try:
            output = subprocess.run(
                [nvidia_smi, "--query-gpu=index,utilization.memory,memory.used,utilization.gpu",
                 "--format=csv,noheader,nounits", "-i", ",".join(self.gpus)],
                capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT, check=True).stdout
        except (OSError, subprocess.SubprocessError):
            return []
        rows = {}
        for line in output.splitlines():
            index, *values = [value.strip() for value in line.split(",")]
            rows[index] = values
        samples = []
        for device_id, gpu in enumerate(self.gpus):
            values = rows.get(gpu)
            if values is None or len(values) != 3:
                continue
            dimensions = (("Level", "Host"), ("DeviceId", str(device_id)))
            for (name, unit), value in zip((("GPUMemoryUtilization", "Percent"),
                                            ("GPUMemoryUsed", "Megabytes"),
                                            ("GPUUtilization", "Percent")), values):
                try:
                    samples.append(Sample(name, unit, float(value), dimensions))
                except ValueError:  # [N/A]: this GPU does not report it
                    pass
        return samples
