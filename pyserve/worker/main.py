"""The worker's life: load the handler, then answer batches until told to stop.

Started by the engine as ``python -m pyserve.worker`` with the model folder as its
working directory and on ``sys.path``, so that a handler imports its own extra files.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
import time
import traceback

from pyserve import _core, frames
from pyserve.allocator import tune_allocator
from pyserve.compat import install_ts_alias
from pyserve.errors import error_body
from pyserve.logs import configure_logging
from pyserve.worker import exit_codes
from pyserve.worker.context import Context
from pyserve.worker.continuous import ContinuousBatch
from pyserve.worker.inbox import Inbox
from pyserve.worker.loader import load_entry_point
from pyserve.worker.metrics import MetricsCache
from pyserve.worker.pinning import apply_in_worker
from pyserve.worker.service import Service

# What handlers see as system_properties["server_version"]: the TorchServe release whose
# behaviour pyserve reproduces, since handlers compare it against TorchServe versions.
SERVER_VERSION = "0.12.0"

log = logging.getLogger("pyserve.worker")


def load(settings: dict) -> Service:
    model_dir = settings["model_dir"]
    if model_dir not in sys.path:
        sys.path.insert(0, model_dir)
    install_ts_alias()
    apply_in_worker(settings.get("cpus", ()), settings.get("threads", 0))
    context = Context(
        model_name=settings["model_name"],
        model_dir=model_dir,
        manifest=settings.get("manifest"),
        batch_size=settings["batch_size"],
        gpu=settings.get("gpu_id"),
        mms_version=SERVER_VERSION,
        limit_max_image_pixels=settings.get("limit_max_image_pixels", True),
        metrics=MetricsCache(settings["model_name"]),
        model_yaml_config=settings.get("model_yaml_config") or {},
    )
    entry_point = load_entry_point(settings["handler"], settings.get("service_envelope"))
    entry_point.initialize(context)
    apply_in_worker((), settings.get("threads", 0))  # size torch's pool if the handler loaded it
    return Service(entry_point, context, decode_json=settings.get("decode_input_request", True))


def out_of_memory(error: BaseException) -> bool:
    """TorchServe's test (ts/model_service_worker.py): a MemoryError, or a RuntimeError that
    names CUDA (torch.cuda.OutOfMemoryError is one)."""
    return isinstance(error, MemoryError) or (
        isinstance(error, RuntimeError) and "CUDA" in str(error))


def within_response_limit(results: list, limit: int | None) -> list:
    """Each body over max_response_size becomes a 500 that says so, as TorchServe refuses them."""
    if not limit:
        return results
    checked = []
    for result in results:
        if len(result[5]) > limit:
            message = f"Response of {len(result[5])} bytes is over max_response_size={limit}"
            result = [result[0], 500, "", "application/json", [],
                      error_body(500, "InternalServerException", message)]
        checked.append(result)
    return checked


def _failed(result: list, code: int, message: str) -> list:
    type = "ServiceUnavailableException" if code == 507 else "InternalServerException"
    return [result[0], code, "", "application/json", [], error_body(code, type, message)]


def send(channel: _core.WorkerChannel, batch_id: int, done: bool, results: list, metrics: list,
         started_ns: int) -> int:
    return channel.send(frames.encode_results(batch_id, done, results, metrics, started_ns))


def send_results(channel: _core.WorkerChannel, batch_id: int, results: list, metrics: list,
                 started_ns: int) -> None:
    """One frame for the batch; if it does not fit, or memory for it cannot be had, one frame
    per result, each answer that still cannot be sent replaced by a small error that says why."""
    if send(channel, batch_id, True, results, metrics, started_ns) == _core.WRITTEN:
        return
    for index, result in enumerate(results):
        done = index == len(results) - 1
        status = send(channel, batch_id, done, [result], metrics if done else [], started_ns)
        if status == _core.TOO_LARGE:
            message = f"response of {len(result[5])} bytes is larger than the worker's channel"
            status = send(channel, batch_id, done, [_failed(result, 500, message)], [], started_ns)
        elif status == _core.NO_MEMORY:
            message = f"not enough memory to send a response of {len(result[5])} bytes"
            status = send(channel, batch_id, done, [_failed(result, 507, message)], [], started_ns)
        if status != _core.WRITTEN:
            raise _core.RingError(f"cannot send results to the server (write status {status})")


def receive(channel: _core.WorkerChannel, metrics: MetricsCache | None = None) -> list:
    """The server's next frame, checked by frames.decode_request_frame. While the handler's
    metric updates wait, the wait ends when they are due, and they are sent on their own."""
    while metrics is not None and metrics.pending:
        frame = channel.receive(timeout=metrics.seconds_until_due())
        if frame is not None:
            return frames.decode_request_frame(frame)
        updates = metrics.drain()
        if updates:
            channel.send(frames.encode_metric_updates(updates))
    return frames.decode_request_frame(channel.receive())


def serve(channel: _core.WorkerChannel) -> int:
    """The exit code: see pyserve.worker.exit_codes."""
    try:
        return _serve(channel)
    except (frames.FrameError, _core.RingError) as error:
        # Nothing more from this ring can be trusted; the server notices the exit and
        # answers or re-queues the requests this worker held.
        log.error("giving up on the rings shared with the server: %s", error)
        return exit_codes.CHANNEL_BROKEN


def _serve(channel: _core.WorkerChannel) -> int:
    frame = receive(channel)
    if frame[0] != frames.LOAD:
        log.error("expected a load frame, got kind %s", frame[0])
        return exit_codes.NO_LOAD_FRAME
    settings = frame[1]
    try:
        service = load(settings)
    except BaseException as error:  # noqa: BLE001 - reported to the server, then exit
        log.error("loading model %s failed:\n%s", settings.get("model_name"), traceback.format_exc())
        channel.send(frames.encode_load_failed(f"{type(error).__name__}: {error}"))
        return exit_codes.OUT_OF_MEMORY if out_of_memory(error) else exit_codes.LOAD_FAILED
    channel.send(frames.encode_loaded({"pid": os.getpid()}))
    limit = settings.get("max_response_size")

    def send_parts(batch_id: int, results: list, started_ns: int, done: bool = False) -> None:
        results = within_response_limit(results, limit)
        if send(channel, batch_id, done, results, [], started_ns) != _core.WRITTEN:
            raise _core.RingError("cannot send a streamed answer to the server")

    continuous = None
    if (settings.get("model_yaml_config") or {}).get("continuousBatching") is True:
        continuous = ContinuousBatch(channel, service, send_parts)

    inbox = Inbox(channel)
    read = functools.partial(receive, channel, service.context.metrics)
    while True:
        frame = inbox.next(read)
        started_ns = time.monotonic_ns()
        kind = frame[0]
        if kind == frames.STOP:
            updates = service.context.metrics.drain(force=True)
            if updates:
                channel.send(frames.encode_metric_updates(updates))
            return exit_codes.STOPPED
        if kind == frames.BATCH:
            frame[2] = inbox.without_withdrawn(frame[2])
            if not frame[2]:  # every client of this batch hung up: nothing to run
                send_results(channel, frame[1], [], [], started_ns)
                continue
        if kind == frames.BATCH and continuous is not None:
            _, batch_id, requests = frame
            if continuous.run(batch_id, requests, started_ns):
                return exit_codes.STOPPED
        elif kind == frames.BATCH:
            _, batch_id, requests = frame
            parts = functools.partial(send_parts, batch_id, started_ns=started_ns)
            results = within_response_limit(service.predict(requests, parts), limit)
            send_results(channel, batch_id, results, service.context.metrics.drain(), started_ns)
        else:
            log.error("ignoring a frame of unknown kind %s", kind)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pyserve.worker", description=__doc__)
    parser.add_argument("--channel", required=True,
                        help="the inherited descriptors of its channel: down ring, up ring, "
                             "up eventfd, down eventfd, comma-separated")
    parser.add_argument("--parent-pid", type=int, required=True, help="the server's pid")
    args = parser.parse_args(argv)

    configure_logging("worker")
    # Ctrl-C reaches the whole process group; the server decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _core.set_parent_death_signal(signal.SIGKILL)
    tune_allocator()
    if os.getppid() != args.parent_pid:
        return exit_codes.LOAD_FAILED  # the server died before the death signal was armed
    channel = _core.WorkerChannel(*(int(fd) for fd in args.channel.split(",")))
    code = serve(channel)
    if code in (exit_codes.LOAD_FAILED, exit_codes.OUT_OF_MEMORY):
        # At once: threads the handler started before it failed must not keep this process
        # alive, since the server answers the registration when it has exited.
        logging.shutdown()
        os._exit(code)
    return code
