"""The engine: registered models and versions, and the way a prediction reaches a worker.

Each model version is extracted once, gets a queue in the C++ scheduler and a set of
worker processes (pyserve.engine.pool). Unregistering drains: the version stops taking
requests, what it queued is served, then its workers finish and exit.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import shutil
import tempfile
from pathlib import Path

from pyserve import archive
from pyserve.config import Settings
from pyserve.engine.core import Core, ring_capacity_for, segment_prefix
from pyserve.engine.loading import RegisterOptions, prepare
from pyserve.engine.models import ModelVersion
from pyserve.engine.placement import Placement, visible_gpus
from pyserve.engine.pool import WorkerPool
from pyserve.engine.stale import remove_stale_segments
from pyserve.errors import ModelNotFound, ModelVersionNotFound, ServeError, ServiceUnavailable
from pyserve.metrics import ServerMetrics, WorkerSummary

log = logging.getLogger("pyserve.engine")


def default_worker_count() -> int:
    """One worker per core this process may run on (TorchServe: per core, when no GPU)."""
    return len(os.sched_getaffinity(0)) or 1


class Engine:
    def __init__(self, settings: Settings, metrics: ServerMetrics | None = None):
        self.settings = settings
        self.metrics = metrics or ServerMetrics()
        self.metrics.worker_summary = self.worker_summary
        capacity = ring_capacity_for(settings.max_request_size, settings.max_response_size)
        self.core = Core(segment_prefix(), capacity, self._on_worker_event, self._on_batch_done)
        self.gpus = visible_gpus(settings.number_of_gpu, os.environ)
        self.pool = WorkerPool(self.core, settings, Placement(self.gpus))
        self.models: dict[str, dict[str, ModelVersion]] = {}
        self.default_versions: dict[str, str] = {}
        self._model_ids = itertools.count(1)
        self._drained: dict[int, asyncio.Future] = {}  # core id -> resolved when its queue is empty
        self._extract_root = Path(tempfile.mkdtemp(prefix="pyserve-models-"))
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        remove_stale_segments()
        self._loop = asyncio.get_running_loop()
        self.core.start(self._loop)
        self.pool.start(self._loop)

    # -- the registry -----------------------------------------------------------------

    def model(self, name: str, version: str | None = None) -> ModelVersion:
        versions = self.models.get(name)
        if not versions:
            raise ModelNotFound(f"Model not found: {name}")
        if version is None:
            return versions[self.default_versions[name]]
        if version not in versions:
            raise ModelVersionNotFound(f"Model version: {version} does not exist for model: {name}")
        return versions[version]

    def is_default(self, model: ModelVersion) -> bool:
        return self.default_versions.get(model.name) == model.version

    def set_default(self, name: str, version: str) -> None:
        if name not in self.models:
            raise ModelNotFound(f"Model not found: {name}")
        if version not in self.models[name]:
            raise ModelVersionNotFound(f"Model version {version} does not exist for model {name}")
        self.default_versions[name] = version

    async def register(
        self,
        url: str,
        options: RegisterOptions | None = None,
        *,
        synchronous: bool = True,
        loaded_at_startup: bool = False,
    ) -> ModelVersion:
        """Prepares the archive and starts its workers; if synchronous, waits until they load.

        A synchronous registration whose workers fail to load is undone, as in TorchServe.
        """
        default_workers = self.settings.default_workers_per_model or (
            default_worker_count() if loaded_at_startup else 1
        )
        model = await prepare(url, options or RegisterOptions(), self.settings, self._extract_root,
                              next(self._model_ids), default_workers, self.models,
                              from_api=not loaded_at_startup)
        model.loaded_at_startup = loaded_at_startup
        config = model.config
        if config.device_type is None:
            config.device_type = "gpu" if self.gpus else "cpu"
        self.core.scheduler.add_model(
            model.core_id, config.batch_size, config.max_batch_delay, config.job_queue_size
        )
        self.models.setdefault(model.name, {})[model.version] = model
        self.default_versions.setdefault(model.name, model.version)
        try:
            started = self.pool.scale_to(model, config.min_workers)
        except ServeError:
            await self.unregister(model)
            raise
        if synchronous and not await self.pool.wait_loaded(model, started):
            await self.unregister(model)
            raise ServeError(500, "InternalServerException",
                             f"Failed to start workers for model {model.name} version: {model.version}")
        return model

    async def unregister(self, model: ModelVersion, timeout: float | None = None) -> None:
        """Stops routing to the version, serves what it queued, stops its workers, cleans up."""
        versions = self.models.get(model.name, {})
        if versions.get(model.version) is not model:
            return
        model.retired = True
        del versions[model.version]
        if not versions:
            del self.models[model.name]
            del self.default_versions[model.name]
        elif self.default_versions[model.name] == model.version:
            self.default_versions[model.name] = sorted(versions)[-1]

        if model.live_workers() and self.core.scheduler.queued(model.core_id):
            drained = self._drained.setdefault(model.core_id, self._loop.create_future())
            try:
                await asyncio.wait_for(asyncio.shield(drained), timeout or model.config.response_timeout)
            except asyncio.TimeoutError:
                log.warning("unregistering %s:%s before its queue drained", model.name, model.version)
        self.pool.scale_to(model, 0)
        await self.pool.wait_exited(list(model.workers.values()))
        self._drained.pop(model.core_id, None)
        leftovers = self.core.scheduler.remove_model(model.core_id)
        self.core.fail(leftovers, 503, "ServiceUnavailableException",
                       f'Model "{model.name}" was unregistered before serving this request')
        if model.extracted:
            archive.remove_extracted(model.model_dir, self._extract_root)
        if model.dependency_dir is not None:
            archive.remove_extracted(model.dependency_dir, self._extract_root)
        if model.downloaded_archive is not None:
            model.downloaded_archive.unlink(missing_ok=True)

    # -- workers ----------------------------------------------------------------------

    async def scale(self, model: ModelVersion, min_workers: int, max_workers: int,
                    synchronous: bool) -> bool:
        """Sets the version's worker range and starts or stops workers to reach min_workers."""
        model.config.min_workers = min_workers
        model.config.max_workers = max_workers
        started = self.pool.scale_to(model, min_workers)
        if not synchronous:
            return True
        return await self.pool.wait_loaded(model, started)

    def worker_summary(self) -> list[WorkerSummary]:
        return [
            WorkerSummary(model.name, model.version, len(model.live_workers()),
                          len(model.ready_workers()), model.restarts)
            for versions in self.models.values() for model in versions.values()
        ]

    def _on_worker_event(self, worker_id: int, kind: int, frame: bytes) -> None:
        self.pool.on_worker_event(worker_id, kind, frame)

    def _on_batch_done(self, worker_id: int, size: int, handler_metrics: list) -> None:
        model = self.pool.model_of(worker_id)
        if model is None:
            return
        self.metrics.batch_stats(model.name, model.version).batch_sizes.observe(size)
        if handler_metrics:
            self.metrics.record_handler_metrics(model, handler_metrics)
        drained = self._drained.get(model.core_id)
        if drained is not None and not drained.done() and not self.core.scheduler.queued(model.core_id):
            drained.set_result(True)

    # -- requests ---------------------------------------------------------------------

    def infer(
        self, model: ModelVersion, request_id: str, content_type: str, headers: list, body: bytes
    ) -> asyncio.Future:
        if not model.can_serve():
            raise ServiceUnavailable(
                f'Model "{model.name}" has no worker to serve inference request. '
                "Please use scale workers API to add workers."
            )
        depth = self.core.scheduler.queued(model.core_id)
        self.metrics.batch_stats(model.name, model.version).queue_depths.observe(depth)
        return self.core.submit(model.core_id, request_id, content_type, headers, body)

    # -- shutdown ---------------------------------------------------------------------

    async def close(self) -> None:
        """Lets every worker finish what it holds, then removes all processes and segments."""
        await self.pool.stop_all()
        self.core.close()
        shutil.rmtree(self._extract_root, ignore_errors=True)
