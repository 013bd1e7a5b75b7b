"""Worker processes: starting them, waiting for them to load, and what happens when they exit.

Starting a worker is all or nothing: if its channel, its process or its pidfd cannot be
had (descriptors or memory exhausted), whatever was made is undone and the caller gets a
ServeError that says why. A worker that has not loaded within its model's startup_timeout is
killed, whichever way it was started. A worker that exits unexpectedly, or fails to load, is
noticed at once (pidfd); the core re-queues what it held, and it is restarted, under the same
id, while its model is still registered and short of workers. Describe shows it meanwhile
(FAILED when it failed to load, else STOPPED).

The restart back-off depends on why it died. A worker that died running a batch is restarted
after a second (the blame is on the requests it ran, each tried on one more worker and then
answered 500), so poison requests cannot push restarts back. One that failed to load backs
off as TorchServe does (1, 1, 2, 3, 5, 8... s: RESTART_BACKOFF); one that dies otherwise
the same way, but never longer than CRASH_BACKOFF_CAP, starting over once a worker has stayed
up STABLE_SECONDS. As in TorchServe, a worker is given up on once it has failed to come back
(to load again) for its model's maxRetryTimeoutInSec; describe shows it until the model is
scaled. A watchdog kills a worker whose running batch outlives response_timeout.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import Callable

from pyserve import _core, frames
from pyserve.config import Settings
from pyserve.engine.models import ModelVersion
from pyserve.engine.placement import Placement, PlacementError
from pyserve.engine.workers import WorkerProcess
from pyserve.errors import ServeError, error_body
from pyserve.serving.directory import no_worker
from pyserve.worker import exit_codes

log = logging.getLogger("pyserve.engine")

# Seconds, TorchServe's (WorkerThread.BACK_OFF): the nth restart in a row waits the nth.
RESTART_BACKOFF = (1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987, 1597)
CRASH_BACKOFF_CAP = 21  # seconds: a worker that had loaded comes back sooner than TorchServe's
STABLE_SECONDS = 60.0
STOP_GRACE_SECONDS = 10.0
WATCHDOG_INTERVAL = 1.0
DIED_TWICE = error_body(500, "InternalServerException",
                        "Worker died while running this request, and so did the worker it was "
                        f"retried on; it is not tried again (at most {_core.MAX_ATTEMPTS} workers)")
LOST = error_body(500, "InternalServerException",
                  "The worker this request was pinned to exited before running it")


def load_failure_code(worker: WorkerProcess) -> int:
    """TorchServe's status for a synchronous registration or scale whose worker failed to
    load: 507 when the handler ran out of memory loading, else 500."""
    return 507 if worker.exit_code == exit_codes.OUT_OF_MEMORY else 500


class WorkerPool:
    def __init__(self, core: _core.Core, settings: Settings, placement: Placement,
                 on_change: Callable[[], None] = lambda: None):
        self.core = core
        self.settings = settings
        self.placement = placement
        self.on_change = on_change  # a worker became ready, failed or exited
        self.closing = False
        self._ids = itertools.count(settings.initial_worker_port)
        self._workers: dict[int, tuple[WorkerProcess, ModelVersion]] = {}
        self._restart_attempts: dict[int, int] = {}
        self._restarting: set[int] = set()  # ids of dead workers waiting out their back-off
        self._failing_since: dict[int, float] = {}  # id -> when it died and has not loaded since
        self._loop: asyncio.AbstractEventLoop | None = None
        # Set by the engine: hands over the worker events the core holds, so that what a worker
        # sent just before it exited (its LOAD_FAILED) is seen before its exit is handled.
        self.take_events: Callable[[], None] = lambda: None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.call_later(WATCHDOG_INTERVAL, self._watchdog)

    def _watchdog(self) -> None:
        """Kills the workers whose running batch has taken longer than response_timeout."""
        if self.closing:
            return
        for worker, model in list(self._workers.values()):
            seconds = self.core.running_batch_seconds(worker.id)
            if worker.alive and not worker.timed_out and seconds > model.config.response_timeout:
                log.error("worker %s of %s:%s took %.0f s, over response_timeout=%s s; killing it",
                          worker.id, model.name, model.version, seconds,
                          model.config.response_timeout)
                worker.timed_out = True
                worker.kill()
        self._loop.call_later(WATCHDOG_INTERVAL, self._watchdog)

    def model_of(self, worker_id: int) -> ModelVersion | None:
        entry = self._workers.get(worker_id)
        return entry[1] if entry else None

    # -- scaling ----------------------------------------------------------------------

    def scale_to(self, model: ModelVersion,
                 count: int) -> tuple[list[WorkerProcess], list[WorkerProcess]]:
        """Starts or stops workers until `count` are alive: (those started, those stopping).
        Workers given up on are forgotten first. A worker still loading is stopped at once
        (killed, as TorchServe stops every worker): it holds no request."""
        for worker in list(model.workers.values()):
            if worker.exit_code is not None and worker.id not in self._restarting:
                self._forget(model, worker.id)
        self.take_events()  # which workers have loaded, as the core knows it
        live = model.live_workers()
        stopping = live[count:]
        for worker in stopping:
            self.core.stop_worker(worker.id)
            worker.stop()
            if worker.loaded_at is None:
                worker.kill()
        missing = count - len(live)
        return [self.spawn(model, starting=missing - started) for started in range(missing)], stopping

    async def wait_loaded(self, started: list[WorkerProcess]) -> WorkerProcess | None:
        """None once every started worker has loaded; else the first that failed to, once it
        has exited (TorchServe answers at the first failure, not after its retries)."""
        waiting = {worker.loaded: worker for worker in started}
        while waiting:
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                worker = waiting.pop(future)
                if not future.result():
                    return worker
        return None

    async def wait_exited(self, workers: list[WorkerProcess]) -> None:
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

    def spawn(self, model: ModelVersion, worker_id: int | None = None,
              starting: int = 1) -> WorkerProcess:
        """Starts one worker; `starting` counts it and the others started together with it.

        All or nothing: a ServeError leaves no placement, channel or process behind."""
        try:
            placement = self.placement.assign(f"{model.name}:{model.version}",
                                              model.config.device_type, model.config.device_ids,
                                              starting)
        except PlacementError as error:
            raise ServeError(500, "InternalServerException", str(error)) from None
        worker_id = worker_id if worker_id is not None else next(self._ids)
        try:
            fds = self.core.add_worker(worker_id, model.core_id, self._load_frame(model, placement))
        except (OSError, RuntimeError) as error:
            self.placement.release(placement)
            raise ServeError(500, "InternalServerException",
                             f"Cannot start a worker for model {model.name}: {error}") from None
        paths = [str(model.dependency_dir)] if model.dependency_dir else []
        worker = WorkerProcess(worker_id, model.model_dir, fds, self._exited,
                               env=placement.environment(), extra_paths=paths,
                               name=f"W-{worker_id}-{model.name}_{model.version}")
        worker.placement = placement
        try:
            worker.start(self._loop)
        except OSError as error:
            self.core.worker_exited(worker_id, False, (500, DIED_TWICE), (500, DIED_TWICE), (500, LOST))
            self.placement.release(placement)
            raise ServeError(500, "InternalServerException",
                             f"Cannot start a worker for model {model.name}: {error}") from None
        model.workers[worker_id] = worker
        self._workers[worker_id] = (worker, model)
        self._loop.call_later(model.config.startup_timeout, self._check_loaded, worker, model)
        self.on_change()
        return worker

    def _check_loaded(self, worker: WorkerProcess, model: ModelVersion) -> None:
        """startup_timeout: a worker not loaded by then is killed, and its load has failed."""
        if worker.loaded_at is not None or worker.exit_code is not None:
            return
        timeout = model.config.startup_timeout
        if worker.load_error is None:
            log.error("worker %s of %s:%s did not load within startup_timeout=%s s; killing it",
                      worker.id, model.name, model.version, timeout)
            worker.mark_load_failed(f"did not load within startup_timeout={timeout} s")
        worker.kill()

    def _load_frame(self, model: ModelVersion, placement) -> bytes:
        return frames.encode_load(
            {
                "model_name": model.name,
                "model_version": model.version,
                "model_dir": str(model.model_dir),
                "handler": model.handler,
                "manifest": model.manifest,
                "batch_size": model.config.batch_size,
                "gpu_id": placement.gpu_id,
                "cpus": list(placement.cpus),
                "threads": placement.threads,
                "limit_max_image_pixels": self.settings.limit_max_image_pixels,
                "decode_input_request": self.settings.decode_input_request,
                "service_envelope": self.settings.service_envelope,
                "max_response_size": self.settings.max_response_size,
                "model_yaml_config": model.yaml_config,
            }
        )

    async def stop_all(self) -> None:
        """Lets every worker finish what it holds and exit."""
        self.closing = True
        workers = [worker for worker, _ in self._workers.values()]
        for worker in workers:
            if worker.alive:
                self.core.stop_worker(worker.id)
                worker.stop()
        await self.wait_exited(workers)

    # -- events -----------------------------------------------------------------------

    def on_worker_event(self, worker_id: int, kind: int, frame: bytes) -> None:
        entry = self._workers.get(worker_id)
        if kind == frames.BROKEN:
            log.error("worker %s sent frames that cannot be read (%s); killing it", worker_id,
                      frame.decode(errors="replace"))
            if entry:
                entry[0].kill()
            return
        if entry is None:
            return
        worker, model = entry
        if kind == frames.LOADED:
            worker.mark_loaded()
            self._failing_since.pop(worker_id, None)
            log.info("worker %s of %s:%s is ready (pid %s)", worker_id, model.name,
                     model.version, worker.pid)
        elif kind == frames.LOAD_FAILED:
            message = frames.unpack(frame)[1]
            worker.mark_load_failed(message)
            log.error("worker %s of %s:%s failed to load: %s", worker_id, model.name,
                      model.version, message)
        self.on_change()

    def _exited(self, worker: WorkerProcess) -> None:
        model = self._workers[worker.id][1]
        timed_out = error_body(500, "InternalServerException",
                               f"Worker did not answer within response_timeout="
                               f"{model.config.response_timeout} s; it was killed and is restarted")
        *_, was_running = self.core.worker_exited(worker.id, worker.timed_out, (500, DIED_TWICE),
                                                  (500, timed_out), (500, LOST))
        self.take_events()
        del self._workers[worker.id]
        self.placement.release(worker.placement)
        self.on_change()
        stable = worker.loaded_at is not None and time.monotonic() - worker.loaded_at > STABLE_SECONDS
        if was_running or stable:  # the request it ran is blamed (and retried once), not the model
            self._restart_attempts.pop(worker.id, None)
        if worker.stop_requested or self.closing or model.retired:
            self._forget(model, worker.id)
        else:
            log.warning("worker %s of %s:%s exited with code %s", worker.id, model.name,
                        model.version, worker.exit_code)
            if self._gave_up(worker, model):
                log.error("worker %s of %s:%s has not come back for maxRetryTimeoutInSec=%s s; "
                          "it is not restarted again", worker.id, model.name, model.version,
                          model.config.max_retry_timeout)
            else:
                model.restarts += 1
                self._schedule_restart(model, worker)
        if not model.can_serve() and not model.retired:
            self._refuse_queued(model)

    def _gave_up(self, worker: WorkerProcess, model: ModelVersion) -> bool:
        """TorchServe's bound: no restart once it has been failing (dead, and not loaded since)
        for maxRetryTimeoutInSec."""
        now = time.monotonic()
        return now - self._failing_since.setdefault(worker.id, now) >= model.config.max_retry_timeout

    def _forget(self, model: ModelVersion, worker_id: int) -> None:
        model.workers.pop(worker_id, None)
        self._failing_since.pop(worker_id, None)

    def _refuse_queued(self, model: ModelVersion) -> None:
        """No worker is alive or coming back: what the model queued would wait for ever."""
        self.core.fail_queued(model.core_id, 503, no_worker(model.name).body())

    def _schedule_restart(self, model: ModelVersion, worker: WorkerProcess) -> None:
        worker_id = worker.id
        attempt = self._restart_attempts.get(worker_id, 0)
        self._restart_attempts[worker_id] = attempt + 1
        delay = RESTART_BACKOFF[min(attempt, len(RESTART_BACKOFF) - 1)]
        if worker.loaded_at is not None:
            delay = min(delay, CRASH_BACKOFF_CAP)
        log.info("restarting worker %s of %s:%s in %s s", worker_id, model.name, model.version, delay)

        def restart() -> None:
            model.pending_restarts -= 1
            self._restarting.discard(worker_id)
            if model.retired or self.closing:
                return
            if len(model.live_workers()) < model.config.min_workers:
                try:
                    self.spawn(model, worker_id)  # in place of the dead one
                except ServeError as error:
                    log.error("cannot restart worker %s of %s:%s: %s", worker_id, model.name,
                              model.version, error.message)
                    self._forget(model, worker_id)
            else:
                self._forget(model, worker_id)
            if not model.can_serve():
                self._refuse_queued(model)

        model.pending_restarts += 1
        self._restarting.add(worker_id)
        self._loop.call_later(delay, restart)
