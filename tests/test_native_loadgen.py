"""The native load generator (`_loadgen.LoadGenerator`) against real HTTP servers on loopback.

The server is http.server on a free port, in a background thread; the request path tells it
how to answer (a body size, chunked, Connection: close, a status, a delay, garbage).
"""

from __future__ import annotations

import socket
import threading
import time
from array import array
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pyserve.bench import _loadgen

RUN_LIMIT = 60  # seconds any run may take before the test gives up on it


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "100")  # the size a GET would have
        self.end_headers()
        self.server.seen.add(self.client_address)

    def do_GET(self) -> None:
        self.do_POST()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.seen.add(self.client_address)
        kind, _, argument = self.path.strip("/").partition("/")
        if kind == "size":
            self._answer(200, b"x" * int(argument))
        elif kind == "chunked":
            self._answer_chunked(b"y" * int(argument))
        elif kind == "close":
            self._answer(200, b"bye", {"Connection": "close"})
            self.close_connection = True
        elif kind == "silent-close":
            self._answer(200, b"bye")
            self.close_connection = True
        elif kind == "status":
            self._answer(int(argument), b"")
        elif kind == "cycle":
            with self.server.lock:
                self.server.count += 1
                status = (200, 404, 503)[self.server.count % 3]
            self._answer(status, b"")
        elif kind == "sleep":
            time.sleep(float(argument))
            self._answer(200, b"late")
        elif kind == "garbage":
            self.wfile.write(b"NOT HTTP AT ALL\r\n\r\n")
            self.close_connection = True
        elif kind == "hang-up":
            self.close_connection = True  # reads the request, answers nothing
        else:
            self._answer(200, body)

    def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _answer_chunked(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        pieces = [body[i:i + 10_000] for i in range(0, len(body), 10_000)]
        for piece in pieces:
            self.wfile.write(b"%x;ext=1\r\n%s\r\n" % (len(piece), piece))
        self.wfile.write(b"0\r\nX-Trailer: yes\r\n\r\n")


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        pass  # clients the generator drops mid-request (stop, timeout) are expected here


@pytest.fixture
def server():
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.seen = set()  # (host, port) of every client connection that sent a request
    httpd.lock = threading.Lock()
    httpd.count = 0
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(RUN_LIMIT)


def request(path: str, body: bytes = b"", method: str = "POST") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def run(port: int, req: bytes, connections: int = 2, **options) -> dict:
    generator = _loadgen.LoadGenerator("127.0.0.1", port, req, connections, **options)
    generator.start()
    assert generator.wait(RUN_LIMIT), "the run did not end"
    return generator.result()


def port_of(httpd) -> int:
    return httpd.server_address[1]


def test_total_requests_are_all_answered_with_their_status(server):
    result = run(port_of(server), request("/echo", b"hello"), connections=3, total=50)
    assert result["completed"] == 50
    assert result["statuses"] == {200: 50}
    assert result["errors"] == {}


@pytest.mark.parametrize("size", [0, 1, 1000, 65_543, 1 << 20, 5 << 20])
def test_bodies_from_empty_to_a_mebibyte_are_read_whole(server, size):
    # On a kept-alive connection a body read short or long would garble the next answer.
    result = run(port_of(server), request(f"/size/{size}"), connections=1, total=4)
    assert result["statuses"] == {200: 4}
    assert result["errors"] == {}
    assert len(server.seen) == 1


def test_large_request_bodies_are_written_whole(server):
    body = bytes(range(256)) * (8 << 12)  # 8 MiB: far more than a socket buffer takes at once
    result = run(port_of(server), request("/echo", body), connections=1, total=3)
    assert result["statuses"] == {200: 3}
    assert result["errors"] == {}


@pytest.mark.parametrize("size", [0, 5, 10_000, 300_001])
def test_chunked_responses_are_read_whole(server, size):
    result = run(port_of(server), request(f"/chunked/{size}"), connections=2, total=10)
    assert result["statuses"] == {200: 10}
    assert result["errors"] == {}
    assert len(server.seen) == 2


def test_head_responses_have_no_body(server):
    result = run(port_of(server), request("/", method="HEAD"), connections=1, total=5)
    assert result["statuses"] == {200: 5}
    assert result["errors"] == {}
    assert len(server.seen) == 1


def test_connection_close_responses_reopen_the_connection(server):
    result = run(port_of(server), request("/close"), connections=2, total=20)
    assert result["statuses"] == {200: 20}
    assert result["errors"] == {}
    assert len(server.seen) == 20


def test_a_server_that_closes_without_saying_so_is_followed(server):
    result = run(port_of(server), request("/silent-close"), connections=2, total=20)
    assert result["statuses"] == {200: 20}
    assert result["errors"] == {}


def test_status_codes_are_counted(server):
    result = run(port_of(server), request("/cycle"), connections=2, total=30)
    assert result["statuses"] == {200: 10, 404: 10, 503: 10}
    assert result["completed"] == 30


def test_a_malformed_response_is_a_parse_error(server):
    result = run(port_of(server), request("/garbage"), connections=1, total=3)
    assert result["errors"] == {"parse": 3}
    assert result["completed"] == 0


def test_a_close_before_any_answer_is_a_reset(server):
    result = run(port_of(server), request("/hang-up"), connections=1, total=3)
    assert result["errors"] == {"reset": 3}
    assert result["completed"] == 0


@pytest.fixture
def closed_port():
    """A port that is bound but not listening, so connecting to it is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        yield probe.getsockname()[1]


def test_nothing_listening_counts_connect_errors_and_ends(closed_port):
    result = run(closed_port, request("/"), connections=2, total=6)
    assert result["errors"] == {"connect": 6}
    assert result["completed"] == 0
    assert result["statuses"] == {}


def test_nothing_listening_with_a_duration_ends(closed_port):
    result = run(closed_port, request("/"), connections=2, duration=0.3)
    assert result["errors"]["connect"] > 0
    assert set(result["errors"]) == {"connect"}


def test_a_slow_server_is_counted_as_timeout(server):
    result = run(port_of(server), request("/sleep/3"), connections=1, total=2, timeout=0.2)
    assert result["errors"] == {"timeout": 2}
    assert result["completed"] == 0


def test_duration_ends_the_run(server):
    result = run(port_of(server), request("/echo", b"x"), connections=2, duration=0.5)
    assert result["seconds"] >= 0.5
    assert result["completed"] > 0


def test_the_first_of_duration_and_total_ends_the_run(server):
    result = run(port_of(server), request("/echo"), connections=2, duration=RUN_LIMIT, total=10)
    assert result["completed"] == 10


def test_completed_grows_while_running(server):
    generator = _loadgen.LoadGenerator("127.0.0.1", port_of(server), request("/echo"), 2, duration=RUN_LIMIT)
    generator.start()
    try:
        seen = 0
        while seen == 0 and not generator.wait(0.01):
            seen = generator.completed
        assert seen > 0, "completed stayed at 0 while the run went on"
    finally:
        generator.stop()
    assert generator.wait(RUN_LIMIT)
    assert generator.result()["completed"] >= seen


def test_stop_ends_the_run_early(server):
    generator = _loadgen.LoadGenerator("127.0.0.1", port_of(server), request("/echo"), 2, duration=RUN_LIMIT)
    generator.start()
    generator.stop()
    generator.stop()
    assert generator.wait(RUN_LIMIT)
    assert generator.result()["seconds"] < RUN_LIMIT


def test_result_while_running_is_refused(server):
    generator = _loadgen.LoadGenerator("127.0.0.1", port_of(server), request("/echo"), 1, duration=RUN_LIMIT)
    with pytest.raises(RuntimeError, match="not been started"):
        generator.result()
    generator.start()
    with pytest.raises(RuntimeError, match="still going"):
        generator.result()
    generator.stop()
    assert generator.wait(RUN_LIMIT)
    assert isinstance(generator.result(), dict)


def test_a_generator_runs_once(server):
    generator = _loadgen.LoadGenerator("127.0.0.1", port_of(server), request("/echo"), 1, total=1)
    generator.start()
    with pytest.raises(RuntimeError, match="already run"):
        generator.start()
    assert generator.wait(RUN_LIMIT)


def test_dropping_a_running_generator_stops_it(server):
    generator = _loadgen.LoadGenerator("127.0.0.1", port_of(server), request("/echo"), 2, duration=RUN_LIMIT)
    generator.start()
    del generator  # joins its threads; the test would hang if they kept going


def test_latencies_are_one_per_completed_request(server):
    result = run(port_of(server), request("/echo", b"abc"), connections=3, total=40)
    latencies = array("d", result["latencies_us"])
    assert len(latencies) == result["completed"] == sum(result["statuses"].values()) == 40
    assert all(0 < value < RUN_LIMIT * 1e6 for value in latencies)


def test_cpu_seconds_are_reported(server):
    result = run(port_of(server), request("/echo"), connections=2, total=100)
    assert result["cpu_seconds"] > 0


def test_several_threads_share_the_connections(server):
    result = run(port_of(server), request("/echo", b"t"), connections=6, total=300, threads=3)
    assert result["statuses"] == {200: 300}
    assert result["errors"] == {}
    assert len(server.seen) == 6


def test_more_threads_than_connections_still_runs(server):
    result = run(port_of(server), request("/echo"), connections=2, total=20, threads=8)
    assert result["statuses"] == {200: 20}


@pytest.mark.parametrize("host", ["localhost", "::1"])
def test_localhost_and_ipv6_hosts_are_accepted(host):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    address = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    try:
        probe = socket.socket(family)
        probe.bind((address, 0))
    except OSError:
        pytest.skip(f"no {address} on this machine")
    with probe:  # bound, not listening: refused, which proves the address was used
        generator = _loadgen.LoadGenerator(host, probe.getsockname()[1], request("/"), 1, total=2)
        generator.start()
        assert generator.wait(RUN_LIMIT)
        assert generator.result()["errors"] == {"connect": 2}


@pytest.mark.parametrize("arguments, message", [
    (dict(), "duration, a total"),
    (dict(connections=0, total=1), "connections"),
    (dict(connections=-3, total=1), "connections"),
    (dict(host="example.com", total=1), "host"),
    (dict(host="not an address", total=1), "host"),
    (dict(port=0, total=1), "port"),
    (dict(port=70000, total=1), "port"),
    (dict(request=b"", total=1), "request"),
    (dict(total=0), "total"),
    (dict(duration=0.0), "duration"),
    (dict(duration=float("nan")), "duration"),
    (dict(threads=0, total=1), "threads"),
    (dict(timeout=0.0, total=1), "timeout"),
])
def test_invalid_arguments_are_refused(arguments, message):
    options = dict(host="127.0.0.1", port=8080, request=request("/"), connections=1) | arguments
    with pytest.raises(ValueError, match=message):
        _loadgen.LoadGenerator(**options)
