"""Worker placement: which GPU, or which CPU cores and how many threads, each worker gets.

Workers that share a device fight over it: two PyTorch workers on one GPU each hold a CUDA
context, and N CPU workers that each start one thread per core oversubscribe the machine N
times. The engine asks a `Placement` for every new worker, passes the answer to the worker
(`WorkerPlacement.environment()` and its start message) and releases it when the worker
exits; the worker applies it itself (pyserve.worker.pinning) before it loads its model.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

log = logging.getLogger("pyserve.engine")

NVIDIA_SMI_TIMEOUT_SECONDS = 5.0


def visible_gpus(number_of_gpu: int | None, environ: Mapping[str, str]) -> list[str]:
    """The physical GPU ids (nvidia-smi indices, as strings) this server may use.

    Asks nvidia-smi rather than torch so that the frontend never imports torch. Any failure
    of nvidia-smi means no GPUs: a host without a working driver is a CPU host.
    CUDA_VISIBLE_DEVICES (indices or UUIDs, possibly abbreviated) keeps only the GPUs it
    names, in its order; like CUDA, the list ends at the first entry that names no GPU.
    `number_of_gpu` (TorchServe's config key) caps the result.
    """
    gpus = _nvidia_smi_gpus(environ)
    ids = [index for index, _ in gpus]
    restriction = environ.get("CUDA_VISIBLE_DEVICES")
    if restriction is not None:
        ids = []
        for entry in restriction.split(","):
            index = _find_gpu(entry.strip(), gpus)
            if index is None:
                break
            if index not in ids:
                ids.append(index)
    return ids if number_of_gpu is None else ids[: max(0, number_of_gpu)]


def _nvidia_smi_gpus(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """(index, uuid) of every GPU nvidia-smi reports; empty when it is missing or fails."""
    nvidia_smi = shutil.which("nvidia-smi", path=environ.get("PATH", ""))
    if nvidia_smi is None:
        return []
    try:
        result = subprocess.run(
            [nvidia_smi, "--query-gpu=index,uuid", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_SECONDS,
            env=dict(environ), check=False)
    except (OSError, subprocess.SubprocessError) as error:
        log.warning("nvidia-smi failed (%s): using no GPUs", error)
        return []
    if result.returncode != 0:
        log.warning("nvidia-smi exited with %d: using no GPUs: %s",
                    result.returncode, result.stderr.strip())
        return []
    gpus = []
    for line in result.stdout.splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) == 2 and fields[0].isdigit():
            gpus.append((fields[0], fields[1]))
    return gpus


def _find_gpu(entry: str, gpus: list[tuple[str, str]]) -> str | None:
    """The index of the GPU a CUDA_VISIBLE_DEVICES entry names: an index or a UUID prefix."""
    if any(entry == index for index, _ in gpus):
        return entry
    matches = [index for index, uuid in gpus if entry.startswith("GPU-") and uuid.startswith(entry)]
    return matches[0] if len(matches) == 1 else None


class PlacementError(RuntimeError):
    """A worker cannot be placed as its model config asks (no GPU, bad deviceIds)."""


@dataclass(frozen=True)
class WorkerPlacement:
    """Where one worker runs. `threads` 0 means: leave the libraries' own thread count."""

    gpu_id: int | None
    physical_gpu: str | None
    cuda_visible_devices: str | None
    cpus: tuple[int, ...] = ()
    threads: int = 0

    def environment(self) -> dict[str, str]:
        """Variables to set in the worker process before it starts.

        CUDA_DEVICE_ORDER=PCI_BUS_ID makes CUDA number GPUs as nvidia-smi does, so the
        index in CUDA_VISIBLE_DEVICES names the GPU that was chosen. OMP/MKL thread counts
        are read when torch loads, before the worker could call torch.set_num_threads.
        """
        env: dict[str, str] = {}
        if self.cuda_visible_devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.cuda_visible_devices
        if self.physical_gpu is not None:
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        if self.gpu_id is None and self.threads > 0:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(self.threads)
        return env


class Placement:
    """Chooses a GPU or a set of CPU cores for each worker of this server.

    GPUs: TorchServe's round robin, one counter shared by all models (a model with yaml
    deviceIds has its own counter over them), except that the first worker gets the first
    GPU. Each GPU worker sees only its GPU, as cuda:0, so it creates no CUDA context on the
    others. CPU: each new worker takes the least-loaded cores, as many as an even share of
    the cores among the live CPU workers and those starting with it, and runs that many
    threads.
    """

    def __init__(self, gpus: list[str], cpus: Iterable[int] | None = None):
        self.gpus = list(gpus)
        self.cpus = sorted(os.sched_getaffinity(0)) if cpus is None else sorted(cpus)
        self._next_gpu = 0
        self._next_device_id: dict[str, int] = {}
        self._workers_on_core = dict.fromkeys(self.cpus, 0)
        self._live_cpu_workers = 0

    def assign(self, model_key: str, device_type: str | None,
               device_ids: list[int] | None, starting: int = 1) -> WorkerPlacement:
        """The placement of a new worker of `model_key` (yaml deviceType and deviceIds).

        `starting` is how many workers (this one included) are being started together, so
        that the first of them does not take every core only to share them a moment later.
        """
        if device_type == "gpu" and not self.gpus:
            raise PlacementError(f"model {model_key} asks for deviceType gpu, but no GPU is "
                                 "visible to this server (nvidia-smi, CUDA_VISIBLE_DEVICES, "
                                 "number_of_gpu)")
        if self.gpus and device_type != "cpu":
            return self._assign_gpu(model_key, device_ids)
        return self._assign_cpus(starting)

    def release(self, placement: WorkerPlacement) -> None:
        """A worker exited: its cores are free again. Call once per `assign`."""
        if placement.gpu_id is not None:
            return
        self._live_cpu_workers -= 1
        for core in placement.cpus:
            self._workers_on_core[core] -= 1

    def _assign_gpu(self, model_key: str, device_ids: list[int] | None) -> WorkerPlacement:
        if device_ids:
            turn = self._next_device_id.get(model_key, 0)
            self._next_device_id[model_key] = turn + 1
            index = device_ids[turn % len(device_ids)]
            if not 0 <= index < len(self.gpus):
                raise PlacementError(f"model {model_key}: deviceIds entry {index} is not one of "
                                     f"the {len(self.gpus)} visible GPUs")
        else:
            index = self._next_gpu % len(self.gpus)
            self._next_gpu += 1
        physical = self.gpus[index]
        return WorkerPlacement(gpu_id=0, physical_gpu=physical, cuda_visible_devices=physical)

    def _assign_cpus(self, starting: int) -> WorkerPlacement:
        self._live_cpu_workers += 1
        share = max(1, len(self.cpus) // (self._live_cpu_workers + max(starting, 1) - 1))
        cores = sorted(self.cpus, key=lambda core: (self._workers_on_core[core], core))[:share]
        for core in cores:
            self._workers_on_core[core] += 1
        return WorkerPlacement(gpu_id=None, physical_gpu=None,
                               cuda_visible_devices="" if self.gpus else None,
                               cpus=tuple(sorted(cores)), threads=max(1, len(cores)))
