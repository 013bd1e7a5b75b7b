"""Hostile and malformed input against a live server: each is refused clearly (4xx) or served,
never answered 5xx for the server's own reasons, and never stops the server, its worker or
other clients. Every test ends by checking that /ping and a prediction still work.

Most requests go over raw sockets, since HTTP client libraries refuse to send them.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import httpx
import pytest

from helpers import HttpReader, start_server, wait_until, whole_body
from pyserve.frontend.listeners import MAX_REQUEST_HEAD, bind, make_listener

TIMEOUT = 30


@pytest.fixture(scope="module")
def server(model_store, tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("hostile"), model_store, ["echo=echo.mar"],
                          enable_model_api="true", default_workers_per_model=1)
    yield server
    server.stop()


@pytest.fixture
def infer(server):
    with httpx.Client(base_url=server.inference_url, timeout=TIMEOUT) as client:
        yield client


@pytest.fixture
def manage(server):
    with httpx.Client(base_url=server.management_url, timeout=TIMEOUT) as client:
        yield client


@pytest.fixture(autouse=True)
def still_serving(request):
    """After each test: the server is alive, healthy and predicts, its worker did not die, and
    it logged no error of its own (an exception in the app, a worker exit)."""
    if "server" not in request.fixturenames:
        yield
        return
    server = request.getfixturevalue("server")
    logged = len(server.log())
    yield
    assert server.process.poll() is None, server.log()[-3000:]
    with httpx.Client(base_url=server.inference_url, timeout=TIMEOUT) as client:
        ping = client.get("/ping")
        assert ping.status_code == 200 and ping.json() == {"status": "Healthy"}, ping.text
        predicted = client.post("/predictions/echo", content=b"still here")
        assert predicted.status_code == 200 and predicted.content == b"still here", predicted.text
    log = server.log()[logged:]
    for sign in ("Traceback", "exited with code", "ERROR"):
        assert sign not in log, log[-3000:]


# -- raw HTTP ------------------------------------------------------------------------------

def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.settimeout(TIMEOUT)
    return sock


def exchange(port: int, data: bytes) -> tuple[int, dict[str, str], bytes] | None:
    with connect(port) as sock:
        sock.sendall(data)
        return HttpReader(sock).response()


def request(method: str, path: str, body: bytes = b"", headers: dict | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: pyserve"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def error_of(response: httpx.Response) -> dict:
    assert response.headers["content-type"] == "application/json", response.text
    body = response.json()
    assert body["code"] == response.status_code
    return body


# -- multipart and content types -----------------------------------------------------------

PART = b'--XYZ\r\nContent-Disposition: form-data; name="data"\r\n\r\nhello\r\n'


def test_truncated_multipart_is_refused_with_400(infer):
    for body in (PART, PART[:-10], PART[:20]):
        response = infer.post("/predictions/echo", content=body,
                              headers={"content-type": "multipart/form-data; boundary=XYZ"})
        assert response.status_code == 400, (body, response.text)
        assert "multipart" in error_of(response)["message"]


def test_multipart_whose_body_uses_another_boundary_is_refused_with_400(infer):
    response = infer.post("/predictions/echo", content=PART.replace(b"XYZ", b"ABC") + b"--ABC--\r\n",
                          headers={"content-type": "multipart/form-data; boundary=XYZ"})
    assert response.status_code == 400
    assert error_of(response)["type"] == "BadRequestException"


@pytest.mark.parametrize("content_type", ["multipart/form-data", "multipart/form-data; boundary=",
                                          'multipart/form-data; boundary=""'])
def test_multipart_without_a_boundary_is_refused_with_400(infer, content_type):
    response = infer.post("/predictions/echo", content=PART + b"--XYZ--\r\n",
                          headers={"content-type": content_type})
    assert response.status_code == 400
    assert "boundary" in error_of(response)["message"]


@pytest.mark.parametrize("length", [257, 5000])
def test_multipart_with_an_overlong_boundary_is_refused_with_400(infer, length):
    # python-multipart refuses boundaries over 256 bytes; this used to kill the worker.
    boundary = "B" * length
    body = PART.replace(b"XYZ", boundary.encode()) + f"--{boundary}--\r\n".encode()
    response = infer.post("/predictions/echo", content=body,
                          headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 400
    assert "boundary" in error_of(response)["message"].lower()


def test_multipart_with_a_malformed_part_header_is_refused_with_400(infer):
    body = b"--XYZ\r\nNo colon in this header line\r\n\r\nx\r\n--XYZ--\r\n"
    response = infer.post("/predictions/echo", content=body,
                          headers={"content-type": "multipart/form-data; boundary=XYZ"})
    assert response.status_code == 400


@pytest.mark.parametrize("content_type", [
    "application/x-absurd-nonsense",
    "image/jpeg",
    "text/plain; charset=no-such-charset",
    "application/json",  # the body below is not JSON: the handler gets the raw bytes
    ";;;=;",
    "a/b/c/d; q=\"unterminated",
    "x" * 20_000,
])
def test_unknown_or_absurd_content_types_reach_the_handler_unchanged(infer, content_type):
    response = infer.post("/predictions/echo", content=b"plain bytes {",
                          headers={"content-type": content_type})
    assert response.status_code == 200, response.text
    assert response.content == b"plain bytes {"


def test_content_type_with_non_ascii_bytes_reaches_the_handler(server):
    data = request("POST", "/predictions/echo", b"abc").replace(
        b"Host: pyserve\r\n", b"Host: pyserve\r\nContent-Type: \xff\xfe/\xe9\r\n")
    status, _, body = exchange(server.inference_port, data)
    assert (status, body) == (200, b"abc")


def test_json_nested_deeper_than_python_parses_reaches_the_handler_as_bytes(infer):
    body = b"[" * 100_000 + b"]" * 100_000  # json.loads raises RecursionError on it
    response = infer.post("/predictions/echo", content=body,
                          headers={"content-type": "application/json"})
    assert response.status_code == 200
    assert response.content == body


def test_urlencoded_form_with_broken_escapes_is_served(infer):
    response = infer.post("/predictions/echo", content=b"data=%ZZ%&&==&data",
                          headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200, response.text


def test_urlencoded_form_that_is_not_utf8_reaches_the_handler_as_its_bytes(infer):
    response = infer.post("/predictions/echo", content=b"data=\xff\xfe",
                          headers={"content-type": "application/x-www-form-urlencoded"})
    assert (response.status_code, response.content) == (200, b"\xff\xfe")  # as in TorchServe


# -- the management API's JSON body and parameters ------------------------------------------

@pytest.mark.parametrize("body", [
    b"{", b"{'url': 'echo.mar'}", b"\xff\xfe{}",  # not JSON, or not UTF-8
    b"[1]", b"null", b'"echo.mar"', b"5",  # JSON, but not an object
    b'{"url": ["echo.mar"]}', b'{"url": {"a": 1}}', b'{"url": "echo.mar", "model_name": []}',
])
def test_register_with_a_bad_json_body_is_refused_with_400(manage, body):
    response = manage.post("/models", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert error_of(response)["type"] == "BadRequestException"
    assert [m["modelName"] for m in manage.get("/models").json()["models"]] == ["echo"]


def test_register_reads_json_numbers_and_booleans_as_text(manage):
    # A number as model_name used to be registered as an int and broke GET /models for good.
    response = manage.post("/models", json={"url": "echo.mar", "model_name": 5,
                                             "initial_workers": 0, "synchronous": True,
                                             "batch_size": 2.5, "handler": None})
    assert response.status_code == 200, response.text
    try:
        listed = manage.get("/models")
        assert listed.status_code == 200
        assert [m["modelName"] for m in listed.json()["models"]] == ["5", "echo"]
        described = manage.get("/models/5").json()[0]
        assert described["batchSize"] == 1  # 2.5 is not an integer: the default, as TorchServe
    finally:
        assert manage.delete("/models/5").status_code == 200


def test_register_with_a_slash_in_the_model_name_is_refused_with_400(manage):
    # /predictions/a/b would mean model "a" version "b": such a model could never be reached,
    # described or unregistered.
    response = manage.post("/models", params={"url": "echo.mar", "model_name": "a/b",
                                              "initial_workers": "0"})
    assert response.status_code == 400
    assert "model name" in error_of(response)["message"]


@pytest.mark.parametrize("params", [{"min_worker": "5000"}, {"min_worker": "2147483647"},
                                    {"min_worker": "1025", "max_worker": "2000"}])
def test_scaling_to_an_absurd_number_of_workers_is_refused_with_400(manage, params):
    # It used to start them all, one fork after another, with the event loop blocked.
    response = manage.put("/models/echo", params={**params, "synchronous": "true"})
    assert response.status_code == 400
    assert "more than 1024" in error_of(response)["message"]
    assert len(manage.get("/models/echo").json()[0]["workers"]) == 1


def test_a_worker_count_beyond_32_bits_means_the_default_as_in_torchserve(manage):
    # Java's parseInt fails on it, so TorchServe uses the default (1): no billions of workers.
    response = manage.put("/models/echo", params={"min_worker": "99999999999", "synchronous": "true"})
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "Workers scaled to 1 for model: echo"}
    assert len(manage.get("/models/echo").json()[0]["workers"]) == 1


def test_registering_with_absurd_initial_workers_is_refused_with_400(manage):
    response = manage.post("/models", params={"url": "echo.mar", "model_name": "many",
                                              "initial_workers": "100000"})
    assert response.status_code == 400
    assert "initial_workers" in error_of(response)["message"]
    assert manage.get("/models/many").status_code == 404


def test_register_with_huge_numbers_is_served_with_the_defaults(manage):
    response = manage.post("/models", params={
        "url": "echo.mar", "model_name": "huge", "initial_workers": "0",
        "batch_size": "9" * 30, "max_batch_delay": "-" + "9" * 30, "response_timeout": "9" * 5000})
    assert response.status_code == 200, response.text
    try:
        described = manage.get("/models/huge").json()[0]
        assert (described["batchSize"], described["maxBatchDelay"], described["responseTimeout"]) \
            == (1, 100, 120)
    finally:
        assert manage.delete("/models/huge").status_code == 200


# -- the HTTP layer --------------------------------------------------------------------------

def test_a_100_kb_request_header_is_refused_with_431(server):
    data = request("GET", "/ping", headers={"X-Huge": "a" * 100_000})
    with connect(server.inference_port) as sock:
        sock.sendall(data)
        reader = HttpReader(sock)
        status, headers, _ = reader.response()
        assert status == 431
        assert headers["connection"] == "close"
        assert reader.closed()


def test_many_small_headers_adding_up_past_the_limit_are_refused_with_431(server):
    headers = {f"X-Header-{n}": "v" * 20 for n in range(MAX_REQUEST_HEAD // 20)}
    status, _, _ = exchange(server.management_port, request("GET", "/models", headers=headers))
    assert status == 431


def test_headers_just_under_the_limit_are_served(server):
    data = request("POST", "/predictions/echo", b"ok", headers={"X-Big": "a" * 30_000})
    assert exchange(server.inference_port, data)[::2] == (200, b"ok")


def test_a_100_kb_request_line_is_refused(server):
    status, _, _ = exchange(server.inference_port, request("GET", "/ping?q=" + "a" * 100_000))
    assert status in (400, 414, 431)


@pytest.mark.parametrize("data", [
    b"\x00\x01\x02 garbage \xff\r\n\r\n",
    b"GET\r\n\r\n",
    b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
    b"G@T /ping HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /pi ng HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /pi\xffng HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /ping HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",
    b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Nul: a\x00b\r\n\r\n",
], ids=["binary", "no-target", "http-9.9", "bad-method", "space-in-path", "non-ascii-path",
        "header-without-colon", "nul-in-header"])
def test_a_garbled_request_is_answered_400_and_closed(server, data):
    with connect(server.inference_port) as sock:
        sock.sendall(data)
        reader = HttpReader(sock)
        status, _, _ = reader.response()
        assert status == 400
        assert reader.closed()


@pytest.mark.parametrize("headers", [
    "Content-Length: 5\r\nTransfer-Encoding: chunked",  # request smuggling
    "Content-Length: 5\r\nContent-Length: 6",
    "Content-Length: -5",
    "Content-Length: five",
    "Content-Length: 99999999999999999999999999",
    "Transfer-Encoding: chunked, identity",
], ids=["cl-and-te", "two-cl", "negative-cl", "word-cl", "huge-cl", "bad-te"])
def test_contradictory_or_invalid_body_framing_is_answered_400(server, headers):
    data = (f"POST /predictions/echo HTTP/1.1\r\nHost: x\r\n{headers}\r\n\r\n0\r\n\r\n"
            .encode())
    status, _, _ = exchange(server.inference_port, data)
    assert status == 400


def test_an_invalid_chunk_size_is_answered_400(server):
    data = (b"POST /predictions/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"ZZ\r\nabc\r\n0\r\n\r\n")
    status, _, _ = exchange(server.inference_port, data)
    assert status == 400


def test_a_chunked_prediction_is_served(server):
    data = (b"POST /predictions/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    assert exchange(server.inference_port, data)[::2] == (200, b"abcde")


def test_http_1_0_requests_are_answered_and_the_connection_closed(server):
    for data in (b"GET /ping HTTP/1.0\r\n\r\n",
                 b"POST /predictions/echo HTTP/1.0\r\nContent-Length: 3\r\n\r\nold"):
        with connect(server.inference_port) as sock:
            sock.sendall(data)
            reader = HttpReader(sock)
            status, _, body = reader.response()
            assert status == 200
            assert body in (b"old", b'{\n  "status": "Healthy"\n}\n')
            assert reader.closed()


def test_pipelined_requests_are_answered_in_order(server):
    data = b"".join([
        request("POST", "/predictions/echo", b"first"),
        request("GET", "/ping"),
        request("POST", "/predictions/echo", b"second"),
        request("POST", "/predictions/nope", b"third"),
        request("POST", "/predictions/echo", b"fourth"),
    ])
    with connect(server.inference_port) as sock:
        sock.sendall(data)
        reader = HttpReader(sock)
        answers = [reader.response() for _ in range(5)]
    assert [status for status, _, _ in answers] == [200, 200, 200, 404, 200]
    assert [answers[i][2] for i in (0, 2, 4)] == [b"first", b"second", b"fourth"]
    assert json.loads(answers[3][2])["type"] == "ModelNotFoundException"


def test_a_slow_client_trickling_its_header_does_not_block_other_clients(server, infer):
    head = request("POST", "/predictions/echo", b"slow")
    with connect(server.inference_port) as slow:
        for n, byte in enumerate(head[:-4]):  # one byte at a time, other clients in between
            slow.send(bytes([byte]))
            if n % 10 == 0:
                started = time.monotonic()
                response = infer.post("/predictions/echo", content=b"fast")
                assert response.content == b"fast"
                assert time.monotonic() - started < 5
                time.sleep(0.05)
        slow.sendall(head[-4:])
        assert HttpReader(slow).response()[::2] == (200, b"slow")


def test_many_connections_holding_half_a_request_do_not_block_other_clients(server, infer):
    held = []
    try:
        for _ in range(200):
            sock = connect(server.inference_port)
            sock.sendall(b"POST /predictions/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n")
            held.append(sock)
        for sock in held[::2]:  # half of them send the head and part of the body too
            sock.sendall(b"\r\n" + b"x" * 50)
        for _ in range(10):
            assert infer.post("/predictions/echo", content=b"through").content == b"through"
    finally:
        for sock in held:
            sock.close()


def test_a_client_that_disconnects_mid_body_does_not_hurt_the_server(server):
    for port, path, content_type in [
        (server.inference_port, "/predictions/echo", "application/octet-stream"),
        (server.inference_port, "/predictions/echo", "multipart/form-data; boundary=XYZ"),
        (server.inference_port, "/explanations/echo", "application/json"),
        (server.management_port, "/models", "application/json"),
    ]:
        for _ in range(5):
            with connect(port) as sock:
                sock.sendall((f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
                              f"Content-Length: 1000000\r\n\r\n").encode() + b'{"url": "' + b"x" * 5000)
    time.sleep(0.5)  # let the server notice the disconnects before the checks run


def requests_counted(server) -> float:
    text = httpx.get(f"{server.metrics_url}/metrics",
                     params={"name[]": "ts_inference_requests_total"}, timeout=TIMEOUT).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("ts_inference_requests_total{") and 'model_name="echo"' in line)


def test_a_body_cut_short_by_a_disconnect_is_never_run(server):
    before = requests_counted(server)
    for _ in range(3):
        with connect(server.inference_port) as sock:
            sock.sendall(b"POST /predictions/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n"
                         b"\r\n" + b"x" * 5000)
    time.sleep(1)
    assert requests_counted(server) == before


def test_a_client_that_disconnects_before_reading_its_answer_does_not_hurt_the_server(server):
    for _ in range(20):
        with connect(server.inference_port) as sock:
            sock.sendall(request("POST", "/predictions/echo", b"x" * 100_000))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    time.sleep(0.5)


# -- the head timeout, on an in-process listener (the server's is 60 s) ---------------------

async def hello(scope, receive, send):
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"5")]})
    await send({"type": "http.response.body", "body": b"hello"})


async def echo_body(scope, receive, send):
    """Answers the whole body once it arrived; answers nothing if the client went away first."""
    body = await whole_body(receive)
    if body is None:
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
def quick_listener():
    """A listener like the server's, with 0.5 s head and body timeouts and a 4 KiB head limit."""
    loop = asyncio.new_event_loop()
    listener = make_listener(route_by_method, bind("127.0.0.1:0", "test"), "test",
                             max_request_head=4096, request_head_timeout=0.5, request_body_timeout=0.5)
    thread = threading.Thread(target=loop.run_until_complete, args=(listener.run_until_stopped(),))
    thread.start()
    wait_until(lambda: listener.started, timeout=10)
    yield listener
    listener.should_exit = True
    thread.join(10)
    loop.close()


async def route_by_method(scope, receive, send):
    await (echo_body if scope["method"] == "POST" else hello)(scope, receive, send)


def test_a_body_that_stops_arriving_closes_the_connection(quick_listener):
    with connect(quick_listener.port) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        reader = HttpReader(sock)
        assert reader.response() is None  # closed, and the app never answered
    assert exchange(quick_listener.port, request("POST", "/", b"whole"))[::2] == (200, b"whole")


def test_a_body_that_keeps_arriving_slowly_is_not_cut_off(quick_listener):
    with connect(quick_listener.port) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n")
        for byte in b"slow":  # 1.2 s in all, each gap under the 0.5 s timeout
            time.sleep(0.3)
            sock.send(bytes([byte]))
        assert HttpReader(sock).response()[::2] == (200, b"slow")


def test_a_request_head_not_sent_in_time_is_answered_408(quick_listener):
    with connect(quick_listener.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        reader = HttpReader(sock)
        assert reader.response()[0] == 408
        assert reader.closed()
        assert time.monotonic() - started < 5
    assert exchange(quick_listener.port, request("GET", "/"))[::2] == (200, b"hello")


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(quick_listener):
    with connect(quick_listener.port) as sock:
        assert HttpReader(sock).response() is None


def test_the_head_timer_restarts_for_each_request_on_a_connection(quick_listener):
    with connect(quick_listener.port) as sock:
        reader = HttpReader(sock)
        for _ in range(3):
            sock.sendall(b"GET / HTTP/1.1\r\n")
            time.sleep(0.3)
            sock.sendall(b"Host: x\r\n\r\n")  # each head within 0.5 s of its first byte
            assert reader.response()[0] == 200
            time.sleep(0.3)  # idle between requests does not count (keep-alive is 5 s)


def test_the_head_limit_applies_on_an_in_process_listener_too(quick_listener):
    status, _, _ = exchange(quick_listener.port, request("GET", "/", headers={"X": "a" * 5000}))
    assert status == 431
    assert exchange(quick_listener.port, request("GET", "/", headers={"X": "a" * 3000}))[0] == 200
