"""The frames the server and its workers exchange over shared memory.

Every frame is one msgpack array whose first item is its kind; the numbers come from
csrc/protocol.hpp through ``_core``, so both sides agree by construction. The core
itself reads only a frame's kind and, for results, the batch id and ``done`` flag;
everything else passes through it untouched.

Server to worker::

    [LOAD, settings]                      settings: a dict, see engine/workers.py
    [BATCH, batch_id, [request, ...]]     requests exactly as encode_request packed them
    [STOP]                                finish what you hold, then exit

Worker to server::

    [LOADED, info]                        info: {"pid": int}
    [LOAD_FAILED, message]
    [RESULTS, batch_id, done, [result, ...], [metric update, ...], started_ns]

A request is ``{"id", "request_id", "content_type", "headers", "body"}``: the core's
integer id, the client-visible request id, the body's content type, the HTTP headers as
``[[name, value], ...]`` byte pairs, and the raw body. A result is
``[id, status, phrase, content_type, headers, body]`` with ``headers`` a list of
``[name, value]`` string pairs and ``content_type`` None when the handler set none. A
metric update is what a handler recorded through ``context.metrics``:
``[name, unit, type, [dimension names], [dimension values], value]``. ``started_ns`` is
when the worker began the batch, on CLOCK_MONOTONIC, which every process on the host
shares: the frontend subtracts a request's arrival from it to get its queue latency.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgpack

from pyserve import _core

LOAD = _core.FRAME_LOAD
BATCH = _core.FRAME_BATCH
STOP = _core.FRAME_STOP
LOADED = _core.FRAME_LOADED
LOAD_FAILED = _core.FRAME_LOAD_FAILED
RESULTS = _core.FRAME_RESULTS
BROKEN = _core.FRAME_BROKEN


class Result(NamedTuple):
    """One request's answer, as the worker sends it and the frontend replies with it."""

    id: int
    status: int
    phrase: str
    content_type: str | None
    headers: list[list[str]]
    body: bytes
    started_ns: int = 0  # when a worker began the batch; 0 if none did


_packb = msgpack.Packer(use_bin_type=True).pack


def pack(frame: Any) -> bytes:
    return _packb(frame)


def unpack(frame: bytes) -> Any:
    return msgpack.unpackb(frame, raw=False, use_list=True)


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


def encode_results(
    batch_id: int, done: bool, results: list, metrics: list | None = None, started_ns: int = 0
) -> bytes:
    return _packb([RESULTS, batch_id, done, results, metrics or [], started_ns])
