"""How a process hands requests to the core and gets their answers back.

The server process calls the core directly (LocalClient); a frontend process writes to its
channel (ChannelClient). Both get the same reply frames back, one eventfd wake-up for many
of them, and resolve the same futures, so the code above them does not know which it has.
Request ids carry the process's origin in their top bits, so that every process numbers
its own requests and the core routes each answer back without a lookup.

`withdraw` takes back a request nobody waits for any more (pyserve.frontend.predictions calls
it when the wait for its future is cancelled).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from typing import Callable

from pyserve import _core, frames
from pyserve.errors import QueueFull, ServeError, ServiceUnavailable
from pyserve.frames import Result
from pyserve.serving.streamed import Streamed

log = logging.getLogger("pyserve.serving")

# (worker id, kind, frame): LOADED, LOAD_FAILED, BROKEN or METRICS, for the server process only.
Events = Callable[[list], None]


def refusal(status: int) -> ServeError:
    """The answer to a request the core would not queue."""
    if status == _core.SUBMIT_QUEUE_FULL:
        return QueueFull("Model queue is full: job_queue_size reached, retry later")
    if status == _core.SUBMIT_TOO_LARGE:
        return ServeError(413, "RequestTooLargeException", "Request is larger than a worker can take")
    if status == _core.SUBMIT_UNKNOWN_WORKER:
        return ServiceUnavailable("The worker this request must run on is gone")
    if status == _core.SUBMIT_TOO_MANY_SEQUENCES:
        return ServiceUnavailable("Model has maxNumSequence sequences open: a new sequence must "
                                  "wait until one ends or idles out (sequenceMaxIdleMSec)")
    if status == _core.SUBMIT_SEQUENCE_FULL:
        return ServiceUnavailable("This sequence already has maxSequenceJobQueueSize requests "
                                  "waiting behind the one it runs; send the next once one is "
                                  "answered")
    if status == _core.SUBMIT_SEQUENCE_CLOSED:
        return ServiceUnavailable("This sequence has expired (sequenceMaxIdleMSec or "
                                  "sequenceTimeoutMSec), ended, or lost its worker; start a new "
                                  "one by sending no ts_request_sequence_id")
    return ServiceUnavailable("Model is not being served")


def _channel_refusal(status: int) -> ServeError:
    if status == _core.NO_MEMORY:
        return ServeError(507, "ServiceUnavailableException",
                          "Not enough memory in the frontend's channel for this request")
    return refusal(_core.SUBMIT_TOO_LARGE)


class Client:
    """The futures of the requests this process submitted, resolved from reply frames."""

    def __init__(self, loop: asyncio.AbstractEventLoop, origin: int = 0):
        self.loop = loop
        self._pending: dict[int, asyncio.Future] = {}
        self._streams: dict[int, Streamed] = {}
        self._ids = itertools.count((origin << _core.ORIGIN_SHIFT) + 1)

    def submit(self, model_id: int, request_id: str, content_type: str, headers: list, body: bytes,
               worker: int = 0, sequence: int = 0) -> tuple[int, asyncio.Future]:
        """Queues one request: (its id, a future of its Result, or of a Streamed when the
        answer comes in parts). `sequence` is its stateful sequence's key
        (pyserve.serving.sequences)."""
        id = next(self._ids)
        self._send(model_id, id, frames.encode_request(id, request_id, content_type, headers, body),
                   worker, sequence)
        future = self._pending[id] = self.loop.create_future()
        return id, future

    def forget(self, id: int) -> None:
        """Nobody waits for this request any more: its answer, if any, is dropped."""
        self._pending.pop(id, None)
        self._streams.pop(id, None)

    def fail_all(self, error: ServeError) -> None:
        pending, self._pending = self._pending, {}
        self._streams.clear()
        for future in pending.values():
            if not future.done():
                future.set_exception(error)

    def _send(self, model_id: int, id: int, payload: bytes, worker: int, sequence: int) -> None:
        raise NotImplementedError

    def withdraw(self, model_id: int, id: int) -> None:
        """Takes a queued request out of its queue (it never runs), or out of a batch its
        worker has not started, or drops the answer of a running one; its future is
        forgotten either way."""
        raise NotImplementedError

    def _on_replies(self, replies: list[bytes]) -> None:
        for reply in replies:
            kind, first, second = frames.unpack(reply)
            if kind == frames.REPLY:
                for result in second:
                    self._resolve(Result(*result, started_ns=first))
            elif kind == frames.REFUSED:
                future = self._pending.pop(first, None)
                self._streams.pop(first, None)
                if future is not None and not future.done():
                    future.set_exception(refusal(second))

    def _resolve(self, result: Result) -> None:
        if result.more:
            self._part(result)
            return
        future = self._pending.pop(result.id, None)
        self._streams.pop(result.id, None)
        if future is not None and not future.done():
            future.set_result(result)

    def _part(self, result: Result) -> None:
        """The first part resolves the request's future to a Streamed, whose own `last`
        future takes the request's place; later parts go to its queue."""
        stream = self._streams.get(result.id)
        if stream is not None:
            stream.parts.put_nowait(result)
            return
        future = self._pending.get(result.id)
        if future is None or future.done():
            return
        stream = Streamed(result, asyncio.Queue(), self.loop.create_future())
        self._streams[result.id] = stream
        self._pending[result.id] = stream.last
        future.set_result(stream)


class LocalClient(Client):
    """The server process's own requests, straight into the core; also its worker events.

    Handler metrics do not wake the loop (they come with every batch): call take() before
    they are read, and now and then so that they do not pile up (the engine does both)."""

    def __init__(self, core: _core.Core, loop: asyncio.AbstractEventLoop, on_events: Events):
        super().__init__(loop)
        self.core = core
        self._on_events = on_events
        loop.add_reader(core.notify_fd, self.take)

    def _send(self, model_id: int, id: int, payload: bytes, worker: int, sequence: int) -> None:
        status = self.core.submit(model_id, id, payload, worker, sequence)
        if status != _core.SUBMIT_QUEUED:
            raise refusal(status)

    def withdraw(self, model_id: int, id: int) -> None:
        self.forget(id)
        self.core.cancel(model_id, id)

    def take(self) -> None:
        replies, events = self.core.take()
        self._on_replies(replies)
        if events:
            try:
                self._on_events(events)
            except Exception:  # noqa: BLE001 - one bad event must not stop the loop's reader
                log.exception("handling a worker event failed")

    def close(self) -> None:
        self.loop.remove_reader(self.core.notify_fd)


class ChannelClient(Client):
    """A frontend process's requests, through its channel to the server's core.

    A submission that finds the channel full waits in a backlog, in order, until the core
    has read enough to make room (it wakes this side through the same eventfd as replies).
    The backlog holds at most one request per open connection: each waits for its answer.
    """

    def __init__(self, channel: _core.FrontendChannel, origin: int, loop: asyncio.AbstractEventLoop):
        super().__init__(loop, origin)
        self.channel = channel
        self._backlog: deque[tuple[int, int, bytes | None, int, int]] = deque()
        loop.add_reader(channel.wait_fd, self._take)

    def _send(self, model_id: int, id: int, payload: bytes, worker: int, sequence: int) -> None:
        if self._backlog or not self._write(model_id, id, payload, worker, sequence):
            self._backlog.append((model_id, id, payload, worker, sequence))

    def _write(self, model_id: int, id: int, payload: bytes | None, worker: int,
               sequence: int) -> bool:
        """False when there is no room yet; raises for a request that can never be sent.
        A payload of None is a withdrawal that found the channel full."""
        if payload is None:
            return self.channel.cancel(model_id, id) != _core.NO_ROOM
        status = self.channel.submit(model_id, id, payload, worker, sequence)
        if status == _core.NO_ROOM and self.channel.wait_for_room(len(payload)):
            status = self.channel.submit(model_id, id, payload, worker, sequence)
        if status == _core.NO_ROOM:
            return False
        if status != _core.WRITTEN:
            raise _channel_refusal(status)
        return True

    def withdraw(self, model_id: int, id: int) -> None:
        self.forget(id)
        for index, (_, waiting, *_) in enumerate(self._backlog):
            if waiting == id:  # never sent: nothing to tell the core
                del self._backlog[index]
                return
        if self.channel.cancel(model_id, id) == _core.NO_ROOM:
            self._backlog.append((model_id, id, None, 0, 0))

    def _take(self) -> None:
        self._on_replies(self.channel.take())
        while self._backlog:
            model_id, id, payload, worker, sequence = self._backlog[0]
            try:
                if not self._write(model_id, id, payload, worker, sequence):
                    return
            except ServeError as error:
                future = self._pending.pop(id, None)
                if future is not None and not future.done():
                    future.set_exception(error)
            self._backlog.popleft()

    def close(self) -> None:
        self.loop.remove_reader(self.channel.wait_fd)
