"""The load engines `pyserve bench` can drive: the native one (_loadgen), and a Python one.

Both are closed loops on keep-alive connections: each connection sends a request, waits for
the whole answer and sends the next. The native engine (epoll, in C++) is the default: a
Python client spends about as much CPU per request as the server it measures.
"""

from __future__ import annotations

import asyncio
import json
import time
from array import array
from typing import Callable
from urllib.parse import urlsplit

from pyserve.bench.report import RunResult

Progress = Callable[[int], None]
PROGRESS_INTERVAL = 0.1


def json_floats(count: int) -> bytes:
    """A JSON list of `count` numbers in [0, 1): a stand-in for a model's input vector."""
    return json.dumps([round((i % 97) / 97, 4) for i in range(count)]).encode()


def build_request(url: str, body: bytes, content_type: str = "application/octet-stream",
                  headers: dict[str, str] | None = None) -> bytes:
    """The complete HTTP/1.1 request both engines send, byte for byte."""
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [f"POST {path} HTTP/1.1", f"Host: {parts.hostname}:{parts.port}",
             f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def run_native(url: str, request: bytes, connections: int, duration: float | None,
               total: int | None, threads: int, timeout: float,
               progress: Progress | None = None) -> RunResult:
    from pyserve.bench import _loadgen

    parts = urlsplit(url)
    generator = _loadgen.LoadGenerator(parts.hostname, parts.port, request, connections,
                                       duration=duration, total=total, threads=threads,
                                       timeout=timeout)
    generator.start()
    try:
        while not generator.wait(PROGRESS_INTERVAL):
            if progress:
                progress(generator.completed)
    finally:
        generator.stop()
    outcome = generator.result()
    latencies = array("d")
    latencies.frombytes(outcome["latencies_us"])
    return RunResult(url, connections, outcome["seconds"], array("d", (v / 1000 for v in latencies)),
                     dict(outcome["statuses"]), dict(outcome["errors"]), outcome["cpu_seconds"])


class _Connection(asyncio.Protocol):
    def __init__(self, run: "_PythonRun"):
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.expected = -1
        self.status = 0
        self.sent_at = 0
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.send()

    def send(self) -> None:
        if self.run.take_ticket():
            self.sent_at = time.perf_counter_ns()
            self.transport.write(self.run.request)
        else:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.expected < 0:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(self.buffer[: end + 2]).lower()  # keep the last header's CRLF
                self.status = int(head[9:12])
                start = head.find(b"content-length:")
                length = int(head[start + 15:head.find(b"\r\n", start)]) if start >= 0 else 0
                self.expected = end + 4 + length
            if len(self.buffer) < self.expected:
                return
            del self.buffer[: self.expected]
            self.expected = -1
            self.run.record(self.status, time.perf_counter_ns() - self.sent_at)
            self.send()

    def connection_lost(self, exc) -> None:
        if not self.closed.done():
            self.closed.set_result(exc)


class _PythonRun:
    def __init__(self, request: bytes, duration: float | None, total: int | None):
        self.request = request
        self.total = total
        self.deadline = time.perf_counter() + duration if duration else None
        self.issued = 0
        self.latencies = array("d")
        self.statuses: dict[int, int] = {}

    def take_ticket(self) -> bool:
        if self.total is not None and self.issued >= self.total:
            return False
        if self.deadline is not None and time.perf_counter() >= self.deadline:
            return False
        self.issued += 1
        return True

    def record(self, status: int, nanoseconds: int) -> None:
        self.latencies.append(nanoseconds / 1e6)
        self.statuses[status] = self.statuses.get(status, 0) + 1


async def _python_load(url: str, request: bytes, connections: int, duration: float | None,
                       total: int | None, progress: Progress | None) -> RunResult:
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    run = _PythonRun(request, duration, total)
    started, cpu_started = time.perf_counter(), time.process_time()

    async def report() -> None:
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL)
            progress(len(run.latencies))

    reporter = asyncio.create_task(report()) if progress else None
    opened = await asyncio.gather(
        *(loop.create_connection(lambda: _Connection(run), parts.hostname, parts.port)
          for _ in range(connections)),
        return_exceptions=True,
    )
    protocols = [pair[1] for pair in opened if not isinstance(pair, BaseException)]
    await asyncio.gather(*(protocol.closed for protocol in protocols))
    if reporter:
        reporter.cancel()
    errors = {}
    if connections - len(protocols):
        errors["connect"] = connections - len(protocols)
    if run.issued - len(run.latencies):
        errors["reset"] = run.issued - len(run.latencies)
    return RunResult(url, connections, time.perf_counter() - started, run.latencies, run.statuses,
                     errors, time.process_time() - cpu_started)


def run_python(url: str, request: bytes, connections: int, duration: float | None,
               total: int | None, progress: Progress | None = None) -> RunResult:
    import uvloop

    return uvloop.run(_python_load(url, request, connections, duration, total, progress))
