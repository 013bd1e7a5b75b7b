"""A registered model version: where it lives, how it is batched, which workers serve it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pyserve.engine.autoscale import AutoscaleConfig, Autoscaler

if TYPE_CHECKING:
    from pyserve.engine.workers import WorkerProcess


@dataclass
class ModelConfig:
    """Per-version settings, named as TorchServe's API parameters and describe output."""

    batch_size: int = 1
    max_batch_delay: int = 100  # milliseconds
    response_timeout: int = 120  # seconds
    startup_timeout: int = 120  # seconds
    max_retry_timeout: int = 300  # seconds: maxRetryTimeoutInSec, how long failed loads are retried
    min_workers: int = 1
    max_workers: int = 1
    job_queue_size: int = 100
    device_type: str | None = None  # "cpu" or "gpu"; None until placed: gpu when GPUs are visible
    device_ids: list[int] | None = None
    client_timeout: int = 0  # milliseconds: clientTimeoutInMills; 0: none
    wait_for_full_batch: bool = False  # pyserve's waitForFullBatch: TorchServe's batching policy
    sequence: "SequenceConfig | None" = None  # a stateful model's sequence batching
    autoscale: AutoscaleConfig = field(default_factory=AutoscaleConfig)  # pyserve: between min and max


@dataclass
class SequenceConfig:
    """TorchServe's sequence batching settings (model-config yaml), see csrc/core/sequences.hpp."""

    max_idle: int  # milliseconds: sequenceMaxIdleMSec
    timeout: int = 0  # milliseconds: sequenceTimeoutMSec; 0: none
    max_queue: int = 1  # maxSequenceJobQueueSize
    max_sequences: int = 1  # maxNumSequence: sequences open at once
    continuous: bool = False  # continuousBatching


@dataclass
class ModelVersion:
    name: str
    version: str
    url: str  # as given at registration, e.g. "echo.mar"
    model_dir: Path
    manifest: dict
    handler: str
    config: ModelConfig
    core_id: int
    extracted: bool  # whether model_dir is ours to delete
    yaml_config: dict = field(default_factory=dict)
    loaded_at_startup: bool = False
    runtime: str = "python"
    dependency_dir: Path | None = None  # where its requirements were installed, if any
    downloaded_archive: Path | None = None  # fetched into the model store by pyserve; deleted with it
    retired: bool = False  # being unregistered: no restarts, no new requests
    restarts: int = 0  # workers restarted after dying unexpectedly
    pending_restarts: int = 0  # dead workers waiting out their back-off before restarting
    unready_since: float | None = None  # time.monotonic() since when no worker has been ready
    registered_at: float = field(default_factory=time.time)
    workers: dict[int, "WorkerProcess"] = field(default_factory=dict)
    autoscaler: Autoscaler = field(default_factory=Autoscaler)

    def live_workers(self) -> list["WorkerProcess"]:
        return [worker for worker in self.workers.values() if worker.alive]

    @property
    def stateful(self) -> bool:
        return self.config.sequence is not None

    def can_serve(self) -> bool:
        """A worker is alive or coming back: requests may queue for it instead of being refused."""
        return self.pending_restarts > 0 or any(worker.alive for worker in self.workers.values())

    def ready_workers(self) -> list["WorkerProcess"]:
        return [worker for worker in self.workers.values() if worker.ready]
