"""The engine: registered models and versions, and the way a prediction reaches a worker.

Each model version is extracted once, gets a batcher in the C++ core and a set of worker
processes (pyserve.engine.pool). Unregistering drains: the version stops taking requests,
what it queued is served, then its workers finish and exit.

Frontend processes see the registry through snapshots (pyserve.supervisor): the engine
calls `on_change` whenever what they see changes, and awaits `settle` before a management
call that changed it returns, so that a model is served everywhere once its registration
has answered.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import shutil
import time
from typing import Awaitable, Callable

from pyserve import _core, archive, frames
from pyserve.config import Settings
from pyserve.engine.autoscale import SAMPLE_SECONDS, Sample, autoscaled
from pyserve.engine.extract_root import make_extract_root
from pyserve.engine.loading import RegisterOptions, prepare
from pyserve.engine.models import ModelVersion
from pyserve.engine.placement import Placement, visible_gpus
from pyserve.engine.pool import WorkerPool, load_failure_code
from pyserve.engine.workers import WorkerProcess
from pyserve.errors import (ModelNotFound, ModelVersionNotFound, RetryLater, ServeError,
                            ServiceUnavailable, error_body)
from pyserve.frames import Result
from pyserve.metrics import ModelStats, ServerMetrics, WorkerSummary
from pyserve.serving.client import LocalClient
from pyserve.serving.directory import find_version, no_worker
from pyserve.serving.streamed import Streamed

log = logging.getLogger("pyserve.engine")

# Rings hold whole batches; 8 MiB covers TorchServe's default 6.5 MB request limit.
DEFAULT_RING_CAPACITY = 8 * 1024 * 1024
DRAIN_POLL_SECONDS = 0.05
HOUSEKEEPING_SECONDS = 1.0  # collect handler metrics (they wake nobody), expire dead models' queues


def ring_capacity_for(max_request_size: int, max_response_size: int) -> int:
    """A power of two with room for the largest request or response plus framing."""
    needed = max(max_request_size, max_response_size) + 64 * 1024
    capacity = DEFAULT_RING_CAPACITY
    while capacity < needed:
        capacity *= 2
    return capacity


class WorkersDidNotLoad(ServeError):
    """A synchronous registration undone because its workers did not load. `cause` is a
    worker's own reason (the handler's exception, or the startup timeout), which the API
    answer leaves out as TorchServe's does, for the one who started the server."""

    def __init__(self, model: ModelVersion, cause: str | None, code: int = 500):
        super().__init__(code, "InternalServerException",
                         f"Failed to start workers for model {model.name} version: {model.version}")
        self.cause = cause


async def _nothing() -> None:
    return None


def default_worker_count() -> int:
    """One worker per core this process may run on (TorchServe: per core, when no GPU)."""
    return len(os.sched_getaffinity(0)) or 1


class Engine:
    def __init__(self, settings: Settings, metrics: ServerMetrics | None = None):
        self.settings = settings
        self.metrics = metrics or ServerMetrics()
        self.metrics.worker_summary = self.worker_summary
        self.metrics.model_stats = self.model_stats
        self.core = _core.Core(ring_capacity_for(settings.max_request_size, settings.max_response_size))
        self.client: LocalClient | None = None
        self.gpus = visible_gpus(settings.number_of_gpu, os.environ)
        self.on_change: Callable[[], None] = lambda: None
        self.settle: Callable[[], Awaitable[None]] = _nothing
        self.pool = WorkerPool(self.core, settings, Placement(self.gpus), lambda: self.on_change())
        self.models: dict[str, dict[str, ModelVersion]] = {}
        self.default_versions: dict[str, str] = {}
        self._model_ids = itertools.count(1)
        # Removed by close(); by the next start if this server is killed (see extract_root).
        self._extract_root, self._extract_lock = make_extract_root()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.client = LocalClient(self.core, self._loop, self._on_events)
        self.metrics.refresh = self.client.take
        self.pool.start(self._loop)
        self.pool.take_events = self.client.take
        self._loop.call_later(HOUSEKEEPING_SECONDS, self._housekeeping)
        self._loop.call_later(SAMPLE_SECONDS, self._autoscale)

    def _housekeeping(self) -> None:
        if self.client is None or self.pool.closing:
            return
        self.client.take()
        now = time.monotonic()
        for versions in self.models.values():
            for model in versions.values():
                if model.ready_workers():
                    model.unready_since = None
                elif model.unready_since is None:
                    model.unready_since = now
                elif now - model.unready_since > model.config.response_timeout:
                    self._expire_queued(model)
                if model.stateful:
                    self.core.expire_sequences(model.core_id)
        self._loop.call_later(HOUSEKEEPING_SECONDS, self._housekeeping)

    def _expire_queued(self, model: ModelVersion) -> None:
        """No request waits longer than its model's response_timeout for a model that has had
        no worker ready that long (all died and restart, or none has loaded yet): once the
        model has been without one for response_timeout, every request that has waited that
        long is answered 503 with Retry-After. Time spent queued behind a live worker does
        not count."""
        timeout = model.config.response_timeout
        expired = RetryLater(f'Model "{model.name}" has had no worker ready to serve this request '
                            f"for {timeout} s (its response_timeout); retry later")
        count = self.core.expire_queued(model.core_id, timeout,
                                        (expired.code, expired.body(), list(expired.headers.items())))
        if count:
            log.warning("answered %d request(s) for %s:%s that waited %s s without a worker",
                        count, model.name, model.version, timeout)

    def _autoscale(self) -> None:
        """Moves each model whose workers scale themselves (engine/autoscale.py) by one, if
        its autoscaler says so."""
        if self.client is None or self.pool.closing:
            return
        self._loop.call_later(SAMPLE_SECONDS, self._autoscale)
        now = time.monotonic()
        for versions in list(self.models.values()):
            for model in list(versions.values()):
                if autoscaled(model):
                    config, autoscaler = model.config, model.autoscaler
                    sample = autoscaler.measure(self.core, model, config.autoscale, now)
                    target = autoscaler.decide(sample, config.autoscale, config.min_workers,
                                               config.max_workers)
                    if target != sample.workers:
                        self._autoscale_to(model, sample, target, now)

    def _autoscale_to(self, model: ModelVersion, sample: Sample, target: int, now: float) -> None:
        try:
            self.pool.scale_to(model, target)
        except ServeError as error:
            log.error("cannot add a worker to %s:%s: %s", model.name, model.version, error.message)
            return
        model.autoscaler.moved(target - sample.workers, now)
        self.on_change()
        log.info("autoscaling %s:%s from %d to %d workers (expected queue wait %.3f s, "
                 "workers busy %.0f%%)", model.name, model.version, sample.workers, target,
                 sample.expected_wait, sample.busy * 100)

    # -- the registry -----------------------------------------------------------------

    def model(self, name: str, version: str | None = None) -> ModelVersion:
        return find_version(self.models, self.default_versions, name, version)

    def healthy(self) -> bool:
        """TorchServe's /ping: every default version that should have workers has one alive."""
        for name, default in self.default_versions.items():
            model = self.models[name][default]
            if model.config.min_workers > 0 and not model.live_workers():
                return False
        return True

    def is_default(self, model: ModelVersion) -> bool:
        return self.default_versions.get(model.name) == model.version

    def set_default(self, name: str, version: str) -> None:
        if name not in self.models:
            raise ModelNotFound(f"Model not found: {name}")
        if version not in self.models[name]:
            raise ModelVersionNotFound(f"Model version {version} does not exist for model {name}")
        self.default_versions[name] = version
        self.on_change()

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
        self.core.add_model(model.core_id, config.batch_size, config.max_batch_delay, config.job_queue_size,
                            config.client_timeout, config.wait_for_full_batch)
        if config.sequence is not None:
            sequence = config.sequence
            self.core.set_sequences(model.core_id, sequence.max_sequences, sequence.max_queue,
                                    sequence.max_idle, sequence.timeout, sequence.continuous)
        self.models.setdefault(model.name, {})[model.version] = model
        self.default_versions.setdefault(model.name, model.version)
        self.on_change()
        try:
            started, _ = self.pool.scale_to(model, config.min_workers)
        except ServeError:
            await self.unregister(model)
            raise
        failed = await self.pool.wait_loaded(started) if synchronous else None
        if failed is not None:
            await self.unregister(model)
            raise WorkersDidNotLoad(model, failed.load_error, load_failure_code(failed))
        await self.settle()
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
        self.on_change()

        deadline = time.monotonic() + (timeout or model.config.response_timeout)
        while model.live_workers() and self.core.queued(model.core_id):
            if time.monotonic() > deadline:
                log.warning("unregistering %s:%s before its queue drained", model.name, model.version)
                break
            await asyncio.sleep(DRAIN_POLL_SECONDS)
        self.pool.scale_to(model, 0)
        await self.pool.wait_exited(list(model.workers.values()))
        self.core.remove_model(model.core_id, 503, error_body(
            503, "ServiceUnavailableException",
            f'Model "{model.name}" was unregistered before serving this request'))
        await self.settle()
        if model.extracted:
            archive.remove_extracted(model.model_dir, self._extract_root)
        if model.dependency_dir is not None:
            archive.remove_extracted(model.dependency_dir, self._extract_root)
        if model.downloaded_archive is not None:
            model.downloaded_archive.unlink(missing_ok=True)

    # -- workers ----------------------------------------------------------------------

    async def scale(self, model: ModelVersion, min_workers: int, max_workers: int,
                    synchronous: bool) -> WorkerProcess | None:
        """Sets the version's worker range and, as TorchServe does, starts workers up to
        min_workers or stops those past max_workers; the autoscaler then moves within the
        range. If synchronous, returns once the workers started have loaded and those stopped
        have exited: the first started worker that failed to load, if any."""
        model.config.min_workers = min_workers
        model.config.max_workers = max_workers
        model.autoscaler.scaled_explicitly(time.monotonic())
        count = min(max(len(model.live_workers()), min_workers), max_workers)
        started, stopping = self.pool.scale_to(model, count)
        self.on_change()
        if not synchronous:
            return None
        failed = await self.pool.wait_loaded(started)
        await self.pool.wait_exited(stopping)
        await self.settle()
        return failed

    def worker_summary(self) -> list[WorkerSummary]:
        return [
            WorkerSummary(model.name, model.version, len(model.live_workers()),
                          len(model.ready_workers()), model.restarts,
                          model.autoscaler.scale_ups, model.autoscaler.scale_downs)
            for versions in self.models.values() for model in versions.values()
        ]

    def model_stats(self) -> list[ModelStats]:
        stats = []
        for versions in self.models.values():
            for model in versions.values():
                (batch_sizes, batch_sum), (depths, depth_sum) = self.core.stats(model.core_id)
                stats.append(ModelStats(model.name, model.version, batch_sizes, batch_sum, depths,
                                        depth_sum, self.core.withdrawn(model.core_id)))
        return stats

    def _on_events(self, events: list) -> None:
        for worker_id, kind, frame in events:
            if kind == frames.METRICS:
                model = self.pool.model_of(worker_id)
                if model is not None:
                    self.metrics.record_handler_metrics(model, frames.unpack(frame))
            elif worker_id == 0:
                log.error("core: %s", frame.decode(errors="replace"))
            else:
                self.pool.on_worker_event(worker_id, kind, frame)

    # -- requests ---------------------------------------------------------------------

    def infer(self, model: ModelVersion, request_id: str, content_type: str, headers: list,
              body: bytes, sequence: int = 0) -> tuple[int, asyncio.Future[Result | Streamed]]:
        if not model.can_serve():
            raise no_worker(model.name)
        return self.client.submit(model.core_id, request_id, content_type, headers, body,
                                  sequence=sequence)

    def withdraw(self, model: ModelVersion, id: int) -> None:
        self.client.withdraw(model.core_id, id)

    # -- shutdown ---------------------------------------------------------------------

    async def close(self) -> None:
        """Lets every worker finish what it holds, then stops every process and frees the core."""
        await self.pool.stop_all()
        if self.client is not None:
            self.client.close()
            self.client.fail_all(ServiceUnavailable("Server is shutting down"))
        self.core.close()
        shutil.rmtree(self._extract_root, ignore_errors=True)
        os.close(self._extract_lock)
