"""A closed-loop HTTP/1.1 load generator on uvloop protocols.

Each connection sends one request, waits for the whole response, and sends the next, on
one keep-alive socket. Responses are framed by Content-Length only (what model servers
send); the point is to spend as little client CPU per request as a Python client can.
"""

from __future__ import annotations

import asyncio
import time
from array import array
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class LoadResult:
    requests: int
    seconds: float
    latencies_ms: array = field(repr=False)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def build_request(url: str, body: bytes, content_type: str = "application/octet-stream") -> bytes:
    parts = urlsplit(url)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class _Connection(asyncio.Protocol):
    def __init__(self, run: "_Run"):
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


class _Run:
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


async def generate_load(
    url: str,
    body: bytes,
    connections: int,
    duration: float | None = None,
    total: int | None = None,
    content_type: str = "application/octet-stream",
) -> LoadResult:
    """Drives `url` with `connections` keep-alive connections for `duration` s or `total` requests."""
    if duration is None and total is None:
        raise ValueError("give a duration or a request count")
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    run = _Run(build_request(url, body, content_type), duration, total)
    started = time.perf_counter()
    opened = await asyncio.gather(
        *(loop.create_connection(lambda: _Connection(run), parts.hostname, parts.port)
          for _ in range(connections)),
        return_exceptions=True,
    )
    protocols = [pair[1] for pair in opened if not isinstance(pair, BaseException)]
    await asyncio.gather(*(protocol.closed for protocol in protocols))
    seconds = time.perf_counter() - started
    unanswered = run.issued - len(run.latencies)
    return LoadResult(
        requests=len(run.latencies), seconds=seconds, latencies_ms=run.latencies,
        statuses=run.statuses, errors=unanswered + (connections - len(protocols)),
    )
