"""The request path in Python: submit to the C++ scheduler, resolve futures from its completions.

One eventfd, registered with the event loop, tells us that answers are ready; a single
call then takes all of them, so one wake-up serves many finished requests.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from typing import Callable

from pyserve import _core, protocol
from pyserve.errors import QueueFull, ServeError, ServiceUnavailable, error_body
from pyserve.protocol import Result

log = logging.getLogger("pyserve.engine")

WorkerEvent = Callable[[int, int, bytes], None]
# (worker id, requests answered by the frame, what the handler recorded in context.metrics)
BatchDone = Callable[[int, int, list], None]

# Rings hold whole batches; 8 MiB covers TorchServe's default 6.5 MB request limit.
DEFAULT_RING_CAPACITY = 8 * 1024 * 1024


def ring_capacity_for(max_request_size: int, max_response_size: int) -> int:
    """A power of two with room for the largest request or response plus framing."""
    needed = max(max_request_size, max_response_size) + 64 * 1024
    capacity = DEFAULT_RING_CAPACITY
    while capacity < needed:
        capacity *= 2
    return capacity


class Core:
    """Owns the scheduler and the futures of every request it holds."""

    def __init__(self, prefix: str, ring_capacity: int, on_worker_event: WorkerEvent,
                 on_batch_done: BatchDone):
        self.scheduler = _core.Scheduler(prefix, ring_capacity)
        self._on_worker_event = on_worker_event
        self._on_batch_done = on_batch_done
        self._pending: dict[int, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self.scheduler.notify_fd, self._take_completions)

    @property
    def doorbell_name(self) -> str:
        return self.scheduler.doorbell_name

    def submit(
        self, model_id: int, request_id: str, content_type: str, headers: list, body: bytes
    ) -> asyncio.Future:
        """Queues one request; the future resolves to its Result."""
        id = next(self._ids)
        payload = protocol.encode_request(id, request_id, content_type, headers, body)
        status = self.scheduler.submit(model_id, id, payload)
        if status != _core.SUBMIT_QUEUED:
            raise self._refused(status)
        future = self._loop.create_future()
        self._pending[id] = future
        return future

    @staticmethod
    def _refused(status: int) -> ServeError:
        if status == _core.SUBMIT_QUEUE_FULL:
            return QueueFull("Model queue is full: job_queue_size reached, retry later")
        if status == _core.SUBMIT_TOO_LARGE:
            return ServeError(413, "RequestTooLargeException", "Request is larger than a worker can take")
        return ServiceUnavailable("Model is not being served")

    def fail(self, ids: list[int], code: int, type: str, message: str) -> None:
        """Answers the given requests with an error; unknown or finished ids are skipped."""
        body = error_body(code, type, message)
        for id in ids:
            future = self._pending.pop(id, None)
            if future is not None and not future.done():
                future.set_result(Result(id, code, "", "application/json", [], body))

    def _take_completions(self) -> None:
        for worker_id, kind, frame in self.scheduler.take_completions():
            if kind == protocol.RESULTS:
                try:
                    _, _, _, results, metrics, started_ns = protocol.unpack(frame)
                except protocol.FrameError as error:  # the core checked it; a second line of defence
                    self._on_worker_event(worker_id, protocol.BROKEN, str(error).encode())
                    continue
                for result in results:
                    future = self._pending.pop(result[0], None)
                    if future is not None and not future.done():
                        future.set_result(Result(*result, started_ns))
                self._on_batch_done(worker_id, len(results), metrics)
            else:
                try:
                    self._on_worker_event(worker_id, kind, frame)
                except Exception:  # noqa: BLE001 - one bad event must not stop the loop's reader
                    log.exception("handling a worker event failed")

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.scheduler.notify_fd)
        self.scheduler.close()
        self.fail(list(self._pending), 503, "ServiceUnavailableException", "Server is shutting down")


def segment_prefix() -> str:
    """Names of this server's shared-memory segments: /pyserve.<pid>.*, so leftovers can be traced."""
    return f"/pyserve.{os.getpid()}"
