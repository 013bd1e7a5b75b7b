"""The engine: registered models, their workers, and the way a prediction reaches them.

Models are extracted once per version; each version gets a queue in the C++ scheduler and
a set of worker processes. A worker that dies is noticed at once (pidfd); its requests are
re-queued once by the core, and it is restarted with back-off while its model wants it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Protocol

from pyserve import archive, protocol
from pyserve.config import Settings
from pyserve.engine.core import Core, ring_capacity_for, segment_prefix
from pyserve.engine.loading import RegisterOptions, prepare
from pyserve.engine.models import ModelVersion
from pyserve.engine.workers import WorkerProcess
from pyserve.errors import ModelNotFound, ModelVersionNotFound, ServeError, ServiceUnavailable

log = logging.getLogger("pyserve.engine")

# Seconds between restarts of a model's crashed workers, as TorchServe's Fibonacci back-off.
RESTART_BACKOFF = (1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144)
STOP_GRACE_SECONDS = 10.0


class MetricsSink(Protocol):
    def record_handler_metrics(self, model: ModelVersion, updates: list) -> None: ...


def default_worker_count() -> int:
    """One worker per core this process may run on (TorchServe: per core, when no GPU)."""
    return len(os.sched_getaffinity(0)) or 1


class Engine:
    def __init__(self, settings: Settings, metrics: MetricsSink | None = None):
        self.settings = settings
        self.metrics = metrics
        capacity = ring_capacity_for(settings.max_request_size, settings.max_response_size)
        self.core = Core(segment_prefix(), capacity, self._on_worker_event, self._on_metrics)
        self.models: dict[str, dict[str, ModelVersion]] = {}
        self.default_versions: dict[str, str] = {}
        self._model_ids = itertools.count(1)
        self._worker_ids = itertools.count(settings.initial_worker_port)
        self._workers: dict[int, tuple[WorkerProcess, ModelVersion]] = {}
        self._restart_attempts: dict[int, int] = {}
        self._extract_root = Path(tempfile.mkdtemp(prefix="pyserve-models-"))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.core.start(self._loop)

    # -- models ---------------------------------------------------------------------

    def model(self, name: str, version: str | None = None) -> ModelVersion:
        versions = self.models.get(name)
        if not versions:
            raise ModelNotFound(f"Model not found: {name}")
        if version is None:
            return versions[self.default_versions[name]]
        if version not in versions:
            raise ModelVersionNotFound(f"Model version: {version} does not exist for model: {name}")
        return versions[version]

    async def register(
        self,
        url: str,
        options: RegisterOptions | None = None,
        *,
        synchronous: bool = True,
        loaded_at_startup: bool = False,
    ) -> ModelVersion:
        """Prepares the archive, starts its workers and, if synchronous, waits until they load.

        A synchronous registration whose workers fail to load is undone, as in TorchServe.
        """
        default_workers = self.settings.default_workers_per_model or (
            default_worker_count() if loaded_at_startup else 1
        )
        model = await prepare(url, options or RegisterOptions(), self.settings, self._extract_root,
                              next(self._model_ids), default_workers, self.models)
        model.loaded_at_startup = loaded_at_startup
        config = model.config
        self.core.scheduler.add_model(
            model.core_id, config.batch_size, config.max_batch_delay, config.job_queue_size
        )
        self.models.setdefault(model.name, {})[model.version] = model
        self.default_versions.setdefault(model.name, model.version)
        started = self._scale_to(model, config.min_workers)
        if synchronous and not await self._wait_loaded(model, started):
            await self.unregister(model)
            raise ServeError(500, "InternalServerException",
                             f"Failed to start workers for model {model.name} version: {model.version}")
        return model

    async def unregister(self, model: ModelVersion) -> None:
        versions = self.models.get(model.name, {})
        if versions.get(model.version) is not model:
            return
        self._scale_to(model, 0)
        await self._wait_exited(list(model.workers.values()))
        del versions[model.version]
        if not versions:
            del self.models[model.name]
            del self.default_versions[model.name]
        elif self.default_versions[model.name] == model.version:
            self.default_versions[model.name] = sorted(versions)[-1]
        leftovers = self.core.scheduler.remove_model(model.core_id)
        self.core.fail(leftovers, 404, "ModelNotFoundException", f"Model not found: {model.name}")
        if model.extracted:
            archive.remove_extracted(model.model_dir, self._extract_root)
        if model.dependency_dir is not None:
            archive.remove_extracted(model.dependency_dir, self._extract_root)

    # -- workers --------------------------------------------------------------------

    async def scale(self, model: ModelVersion, count: int) -> bool:
        """Starts or stops workers until `count` are alive; True once all started have loaded."""
        return await self._wait_loaded(model, self._scale_to(model, count))

    def _scale_to(self, model: ModelVersion, count: int) -> list[WorkerProcess]:
        live = model.live_workers()
        for worker in live[count:]:
            self.core.scheduler.stop_worker(worker.id)
            worker.stop()
        return [self._spawn(model) for _ in range(count - len(live))]

    async def _wait_loaded(self, model: ModelVersion, started: list[WorkerProcess]) -> bool:
        if not started:
            return True
        timeout = model.config.startup_timeout
        done, late = await asyncio.wait([w.loaded for w in started], timeout=max(timeout, 0))
        for worker in started:
            if not worker.loaded.done():
                log.error("worker %s of %s:%s did not load within startup_timeout=%ss",
                          worker.id, model.name, model.version, timeout)
                worker.load_error = "startup timeout"
                worker.kill()
        return not late and all(future.result() for future in done)

    def _spawn(self, model: ModelVersion, worker_id: int | None = None) -> WorkerProcess:
        worker_id = worker_id if worker_id is not None else next(self._worker_ids)
        load = protocol.encode_load(
            {
                "model_name": model.name,
                "model_version": model.version,
                "model_dir": str(model.model_dir),
                "handler": model.handler,
                "manifest": model.manifest,
                "batch_size": model.config.batch_size,
                "gpu_id": None,
                "limit_max_image_pixels": self.settings.limit_max_image_pixels,
                "decode_input_request": self.settings.decode_input_request,
                "model_yaml_config": model.yaml_config,
            }
        )
        rings = self.core.scheduler.add_worker(worker_id, model.core_id, load)
        paths = [str(model.dependency_dir)] if model.dependency_dir else []
        worker = WorkerProcess(worker_id, model.model_dir, rings, self.core.doorbell_name,
                               self._worker_exited, extra_paths=paths)
        model.workers[worker_id] = worker
        self._workers[worker_id] = (worker, model)
        worker.start(self._loop)
        return worker

    def _on_worker_event(self, worker_id: int, kind: int, frame: bytes) -> None:
        entry = self._workers.get(worker_id)
        if kind == protocol.BROKEN:
            log.error("worker %s sent frames that cannot be read (%s); killing it", worker_id,
                      frame.decode(errors="replace"))
            if entry:
                entry[0].kill()
            return
        if entry is None:
            return
        worker, model = entry
        if kind == protocol.LOADED:
            worker.mark_loaded()
            self._restart_attempts.pop(worker_id, None)
            log.info("worker %s of %s:%s is ready (pid %s)", worker_id, model.name,
                     model.version, worker.pid)
        elif kind == protocol.LOAD_FAILED:
            message = protocol.unpack(frame)[1]
            worker.mark_load_failed(message)
            log.error("worker %s of %s:%s failed to load: %s", worker_id, model.name,
                      model.version, message)

    def _on_metrics(self, worker_id: int, updates: list) -> None:
        entry = self._workers.get(worker_id)
        if entry is not None and self.metrics is not None:
            self.metrics.record_handler_metrics(entry[1], updates)

    def _worker_exited(self, worker: WorkerProcess) -> None:
        _, model = self._workers.pop(worker.id)
        model.workers.pop(worker.id, None)
        failed = self.core.scheduler.worker_exited(worker.id)
        self.core.fail(failed, 500, "InternalServerException", "Worker died.")
        expected = worker.stop_requested or self._closing
        if not expected:
            log.warning("worker %s of %s:%s exited with code %s", worker.id, model.name,
                        model.version, worker.exit_code)
        registered = self.models.get(model.name, {}).get(model.version) is model
        if not expected and registered and worker.load_error is None:
            self._schedule_restart(model, worker.id)
        elif not model.live_workers():
            leftovers = self.core.scheduler.drain_queue(model.core_id) if registered else []
            self.core.fail(leftovers, 503, "ServiceUnavailableException",
                           f'Model "{model.name}" has no worker to serve inference request.')

    def _schedule_restart(self, model: ModelVersion, worker_id: int) -> None:
        attempt = self._restart_attempts.get(worker_id, 0)
        self._restart_attempts[worker_id] = attempt + 1
        delay = RESTART_BACKOFF[min(attempt, len(RESTART_BACKOFF) - 1)]
        log.info("restarting worker %s of %s:%s in %s s", worker_id, model.name, model.version, delay)

        def restart() -> None:
            registered = self.models.get(model.name, {}).get(model.version) is model
            if registered and not self._closing and len(model.live_workers()) < model.config.min_workers:
                self._spawn(model, worker_id)

        self._loop.call_later(delay, restart)

    # -- requests -------------------------------------------------------------------

    def infer(
        self, model: ModelVersion, request_id: str, content_type: str, headers: list, body: bytes
    ) -> asyncio.Future:
        if not model.live_workers():
            raise ServiceUnavailable(
                f'Model "{model.name}" has no worker to serve inference request. '
                "Please use scale workers API to add workers."
            )
        return self.core.submit(model.core_id, request_id, content_type, headers, body)

    # -- shutdown -------------------------------------------------------------------

    async def close(self) -> None:
        """Lets every worker finish what it holds, then removes all processes and segments."""
        self._closing = True
        workers = [worker for worker, _ in self._workers.values()]
        for worker in workers:
            if worker.alive:
                self.core.scheduler.stop_worker(worker.id)
                worker.stop()
        await self._wait_exited(workers)
        self.core.close()
        shutil.rmtree(self._extract_root, ignore_errors=True)

    async def _wait_exited(self, workers: list[WorkerProcess]) -> None:
        pending = [worker.exited for worker in workers if not worker.exited.done()]
        if not pending:
            return
        _, late = await asyncio.wait(pending, timeout=STOP_GRACE_SECONDS)
        if late:
            for worker in workers:
                if not worker.exited.done():
                    log.warning("worker %s did not stop in time; killing it", worker.id)
                    worker.kill()
            await asyncio.wait(late)
