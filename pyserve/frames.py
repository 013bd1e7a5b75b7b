"""The frames that cross a channel between the server and its workers and frontends.

Every msgpack frame is one array whose first item is its kind; the numbers come from
csrc/core/frames.hpp through ``_core``, so both sides agree by construction. The core
frames requests without re-encoding them, and reads a worker's frames only to check them
and route each result back to the process its request came from.

Server to worker::

    [LOAD, settings]                      settings: a dict, see engine/pool.py
    [BATCH, batch_id, [request, ...]]     requests exactly as encode_request packed them
    [STOP]                                finish what you hold, then exit
    [WITHDRAW, request_id]                leave the request out if its batch has not started

Worker to server::

    [LOADED, info]                        info: {"pid": int}
    [LOAD_FAILED, message]
    [RESULTS, batch_id, done, [result, ...], [metric update, ...], started_ns]
    [METRIC_UPDATES, [metric update, ...]]   what the handler recorded, sent while idle

Server to the process a request came from (a frontend, or the server's own Python)::

    [REPLY, started_ns, [result, ...]]    results as the worker wrote them, or made by the core
    [REFUSED, request_id, status]         not queued: a SUBMIT_* status

A request is ``{"id", "request_id", "content_type", "headers", "body"}``: the core's
integer id, the client-visible request id, the body's content type, the HTTP headers as
``[[name, value], ...]`` byte pairs, and the raw body. A result is
``[id, status, phrase, content_type, headers, body]`` with ``headers`` a list of
``[name, value]`` string pairs and ``content_type`` None when the handler set none; a
seventh item ``more=True`` marks a part of a streamed answer that more parts follow. A
``done`` results frame ends its batch: the core answers any request of the batch it left
out with a 500. A metric update is what a handler recorded through ``context.metrics``:
``[name, unit, type, [dimension names], [dimension values], value]``. ``started_ns`` is when
the worker began the batch, on CLOCK_MONOTONIC, which every process on the host shares: the
frontend subtracts a request's arrival from it to get its queue latency.

Frames cross shared memory, so neither side trusts the other's bytes. The core checks
every frame a worker writes against the shapes above before Python sees it
(``_core.decode_worker_frame`` runs that same check); a worker whose frame fails it, or
answers a request its batch does not hold, is reported as BROKEN. The worker checks the
server's frames with ``decode_request_frame``. Both raise ``FrameError``, a ValueError.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgpack

from pyserve import _core

LOAD = _core.FRAME_LOAD
BATCH = _core.FRAME_BATCH
STOP = _core.FRAME_STOP
WITHDRAW = _core.FRAME_WITHDRAW
LOADED = _core.FRAME_LOADED
LOAD_FAILED = _core.FRAME_LOAD_FAILED
RESULTS = _core.FRAME_RESULTS
METRIC_UPDATES = _core.FRAME_METRIC_UPDATES
REPLY = _core.FRAME_REPLY
REFUSED = _core.FRAME_REFUSED
BROKEN = _core.FRAME_BROKEN
METRICS = _core.FRAME_METRICS

# A frame that is not what the protocol says; a ValueError. The same class the core raises.
FrameError = _core.FrameError


class Result(NamedTuple):
    """One request's answer, as the worker sends it and the frontend replies with it."""

    id: int
    status: int
    phrase: str
    content_type: str | None
    headers: list[list[str]]
    body: bytes
    more: bool = False  # a part of a streamed answer; more parts follow
    started_ns: int = 0  # when a worker began the batch; 0 if none did


_packb = msgpack.Packer(use_bin_type=True).pack


def pack(frame: Any) -> bytes:
    return _packb(frame)


def unpack(frame: bytes) -> Any:
    """The frame's msgpack value; FrameError if the bytes are not exactly one value."""
    try:
        return msgpack.unpackb(frame, raw=False, use_list=True)
    except (ValueError, TypeError, msgpack.UnpackException) as error:
        # msgpack raises ValueError subclasses (incl. UnicodeDecodeError for bad UTF-8,
        # ExtraData, StackError for deep nesting) and TypeError for non-bytes input.
        raise FrameError(f"not a msgpack frame: {error}") from None


def _is_uint(value: Any) -> bool:
    return type(value) is int and value >= 0


def _check_request(request: Any) -> None:
    if not isinstance(request, dict):
        raise FrameError("a request must be a map")
    if not (_is_uint(request.get("id")) and isinstance(request.get("request_id"), str)
            and isinstance(request.get("content_type"), str)
            and isinstance(request.get("body"), bytes)):
        raise FrameError("a request needs id, request_id, content_type and body of their types")
    headers = request.get("headers")
    if type(headers) is not list:
        raise FrameError("request headers must be [[name, value], ...] byte pairs")
    for pair in headers:  # a loop, not all(...): this runs for every header of every request
        if type(pair) is not list or len(pair) != 2 or type(pair[0]) is not bytes \
                or type(pair[1]) is not bytes:
            raise FrameError("request headers must be [[name, value], ...] byte pairs")


def decode_request_frame(frame: bytes) -> list:
    """A frame the server wrote, checked: ``[LOAD, settings]``, ``[BATCH, batch_id, requests]``,
    ``[STOP]``, ``[WITHDRAW, request_id]``, or ``[kind, ...]`` of a kind this worker does not
    know (which it ignores).

    FrameError for anything else, so that the worker never acts on half a frame.
    """
    value = unpack(frame)
    if not isinstance(value, list) or not value or type(value[0]) is not int:
        raise FrameError("a frame must be an array that starts with its kind")
    kind = value[0]
    if kind == LOAD:
        if len(value) != 2 or not isinstance(value[1], dict):
            raise FrameError("a load frame must be [LOAD, settings]")
    elif kind == BATCH:
        if len(value) != 3 or not _is_uint(value[1]) or not isinstance(value[2], list):
            raise FrameError("a batch frame must be [BATCH, batch_id, [request, ...]]")
        for request in value[2]:
            _check_request(request)
    elif kind == STOP and len(value) != 1:
        raise FrameError("a stop frame must be [STOP]")
    elif kind == WITHDRAW and (len(value) != 2 or not _is_uint(value[1])):
        raise FrameError("a withdraw frame must be [WITHDRAW, request_id]")
    return value


def encode_request(
    id: int, request_id: str, content_type: str, headers: list, body: bytes
) -> bytes:
    return _packb(
        {
            "id": id,
            "request_id": request_id,
            "content_type": content_type,
            "headers": headers,
            "body": body,
        }
    )


def encode_load(settings: dict) -> bytes:
    return _packb([LOAD, settings])


def encode_loaded(info: dict) -> bytes:
    return _packb([LOADED, info])


def encode_load_failed(message: str) -> bytes:
    return _packb([LOAD_FAILED, message])


def encode_metric_updates(metrics: list) -> bytes:
    return _packb([METRIC_UPDATES, metrics])


def encode_results(
    batch_id: int, done: bool, results: list, metrics: list | None = None, started_ns: int = 0
) -> bytes:
    return _packb([RESULTS, batch_id, done, results, metrics or [], started_ns])
