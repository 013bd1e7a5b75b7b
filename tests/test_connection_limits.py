"""What one client may cost the server: memory per connection, time per body and per answer,
connections per listener, and a 413 a plain client can read.

Clients that misbehave are played over raw sockets; the frontend's memory is read from
/proc/<pid>/status of the server the test started (with frontend_processes=1 it serves the
inference listener itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import httpx
import pytest

from helpers import HttpReader, start_server, wait_until, whole_body
from pyserve.allocator import TRIM_INTERVAL
from pyserve.frontend.listeners import bind, make_listener

TIMEOUT = 30
MiB = 1 << 20
# What one connection may add to the frontend while it runs (docs/configuration.md,
# max_connections): its parsed requests waiting (MAX_PIPELINED and one PARSE_SLICE of them,
# ~2 MB), one answer unsent beyond the write buffer limit and the one being made (1 MB each
# here). Measured: under 1 MiB; before the limits, 58 MiB (1 MB answers) and 510 MiB (none).
CONNECTION_BOUND = 16 * MiB
SETTLED_BOUND = 16 * MiB  # what may stay once the connection is closed
PIPELINING_SECONDS = 5


def resident(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def request(method: str, path: str, body: bytes = b"", headers: dict | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: pyserve"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def connect(port: int, receive_buffer: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:  # before connecting, so that the window stays this small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(TIMEOUT)
    sock.connect(("127.0.0.1", port))
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes] | None:
    return HttpReader(sock).response()


def pipeline_without_reading(sock: socket.socket, data: bytes, seconds: float, sample) -> int:
    """Sends `data` over and over for `seconds`, never reading; calls `sample()` meanwhile.
    Returns the bytes the server took."""
    sock.setblocking(False)
    sent = 0
    pending = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pending = pending or data * 200
        try:
            taken = sock.send(pending)
            sent += taken
            pending = pending[taken:]
        except BlockingIOError:
            time.sleep(0.02)
        sample()
    return sent


# -- a real server ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(hazards_store, tmp_path_factory):
    """Token authorization on, one frontend (the server process), the default body limit."""
    path = tmp_path_factory.mktemp("limits")
    server = start_server(path, hazards_store, ["hazards=hazards.mar"], default_workers_per_model=1,
                          frontend_processes=1, disable_token_authorization="false", max_connections=20)
    server.key = json.loads((path / "key_file.json").read_text())["inference"]["key"]
    yield server
    server.stop()


def settled_memory(server) -> int:
    """The frontend's memory once it has served a few requests."""
    with httpx.Client(base_url=server.inference_url, timeout=TIMEOUT,
                      headers={"Authorization": f"Bearer {server.key}"}) as client:
        for _ in range(20):
            assert client.post("/predictions/hazards", content=b"size:1000000").status_code == 200
    time.sleep(2 * TRIM_INTERVAL)
    return resident(server.process.pid)


@pytest.mark.parametrize("authorized", [False, True], ids=["no-token-small-answers", "1-MB-answers"])
def test_a_client_that_pipelines_without_reading_holds_bounded_memory(server, authorized):
    headers = {"Authorization": f"Bearer {server.key}"} if authorized else {}
    body = b"size:1000000" if authorized else b"x"
    data = request("POST", "/predictions/hazards", body, headers)
    pid = server.process.pid
    before = settled_memory(server)
    peak = before

    def sample():
        nonlocal peak
        peak = max(peak, resident(pid))

    with connect(server.inference_port, receive_buffer=4096) as sock:
        sent = pipeline_without_reading(sock, data, PIPELINING_SECONDS, sample)
        assert sent > 10 * len(data)  # it did take some before it stopped reading
        assert peak - before < CONNECTION_BOUND, f"grew by {(peak - before) // MiB} MiB"
    wait_until(lambda: resident(pid) - before < SETTLED_BOUND, timeout=10 * TRIM_INTERVAL + 5)


def ping(server) -> bytes:
    return request("GET", "/ping", headers={"Authorization": f"Bearer {server.key}"})


def ping_status(server) -> int:
    with connect(server.inference_port) as sock:
        sock.sendall(ping(server))
        return read_response(sock)[0]


def test_connections_past_max_connections_are_answered_503(server):
    with contextlib.ExitStack() as held:
        for _ in range(20):
            held.enter_context(connect(server.inference_port))
        with connect(server.inference_port) as extra:
            extra.sendall(ping(server))
            status, headers, body = read_response(extra)
        assert status == 503
        assert headers["connection"] == "close"
        error = json.loads(body)
        assert error["type"] == "ServiceUnavailableException"
        assert "max_connections" in error["message"]
    wait_until(lambda: ping_status(server) == 200, timeout=10)  # once the closed ones are counted out


def test_a_connection_already_open_is_served_when_the_listener_is_full(server):
    with connect(server.inference_port) as first:
        first.sendall(ping(server))
        assert read_response(first)[0] == 200
        with contextlib.ExitStack() as held:
            for _ in range(19):
                held.enter_context(connect(server.inference_port))
            with connect(server.inference_port) as refused:
                refused.sendall(ping(server))
                assert read_response(refused)[0] == 503
            first.sendall(ping(server))
            status, _, body = read_response(first)
            assert (status, json.loads(body)) == (200, {"status": "Healthy"})


@pytest.mark.parametrize("client", ["urllib", "httpx"])
def test_a_body_over_max_request_size_is_answered_413_that_plain_clients_read(server, client):
    url = f"{server.inference_url}/predictions/hazards"
    body = b"x" * 7_000_000  # max_request_size is 6553500
    headers = {"Authorization": f"Bearer {server.key}", "Content-Type": "application/octet-stream"}
    if client == "httpx":
        assert httpx.post(url, content=body, headers=headers, timeout=TIMEOUT).status_code == 413
        return
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers), timeout=TIMEOUT)
    assert refused.value.code == 413


# -- an in-process listener with short limits -------------------------------------------------

ANSWER = 16 * MiB  # more than the kernel's socket buffers hold between a server and its client
handled: list[bytes] = []


async def answer_as_asked(scope, receive, send):
    """Answers `big` with ANSWER bytes, anything else with itself; records each request."""
    body = await whole_body(receive)
    if body is None:
        return
    handled.append(body)
    answer = b"a" * ANSWER if body == b"big" else body
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(answer)).encode())]})
    await send({"type": "http.response.body", "body": answer})


@pytest.fixture
def listen():
    """Starts listeners like the server's, with the limits given (make_listener's keywords)."""
    handled.clear()
    started = []

    def start(**limits):
        loop = asyncio.new_event_loop()
        listener = make_listener(answer_as_asked, bind("127.0.0.1:0", "test"), "test", **limits)
        thread = threading.Thread(target=loop.run_until_complete, args=(listener.run_until_stopped(),))
        thread.start()
        started.append((listener, thread, loop))
        wait_until(lambda: listener.started, timeout=10)
        return listener

    yield start
    for listener, thread, loop in started:
        listener.should_exit = True
        thread.join(10)
        loop.close()


def test_the_next_pipelined_request_waits_until_the_previous_answer_is_sent(listen):
    with connect(listen().port, receive_buffer=4096) as sock:
        sock.sendall(request("POST", "/", b"big") + request("POST", "/", b"next"))
        time.sleep(0.3)  # well within the write timeout
        assert handled == [b"big"]
        reader = HttpReader(sock)
        status, _, body = reader.response()  # reading the answer lets the next one start
        assert (status, len(body)) == (200, ANSWER)
        assert reader.response()[::2] == (200, b"next")
    assert handled == [b"big", b"next"]


def test_an_answer_not_read_within_the_write_timeout_gets_the_connection_closed(listen):
    listener = listen(response_write_timeout=0.5)
    with connect(listener.port, receive_buffer=4096) as sock:
        sock.sendall(request("POST", "/", b"big"))
        wait_until(lambda: handled == [b"big"], timeout=5)
        wait_until(lambda: not listener.server_state.connections, timeout=5)
        received = 0
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(1 << 20):
                received += len(chunk)
        assert received < ANSWER


def test_a_body_still_arriving_at_its_deadline_gets_the_connection_closed(listen):
    with connect(listen(request_body_timeout=0.5, request_body_deadline=1.5).port) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        started = time.monotonic()
        with contextlib.suppress(OSError):  # each gap is under the 0.5 s gap timeout
            for _ in range(100):
                sock.send(b"x")
                time.sleep(0.2)
        assert time.monotonic() - started < 5
        assert read_response(sock) is None  # closed, and the app never answered
    assert handled == []
