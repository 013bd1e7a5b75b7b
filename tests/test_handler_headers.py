"""A response header a handler sets that HTTP cannot carry (CR or LF in it, a character
outside Latin-1, a name that is no token) is answered as a JSON 500 naming it, and counted
as a 5XX, on every route a prediction takes."""

from __future__ import annotations

import re

import httpx
import pytest

from helpers import HANDLERS, archive_model, start_server

ROUTES = ["/predictions/responses", "/explanations/responses"]  # the fast path and Starlette's


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("handler_headers")
    archive_model(work / "store", "responses", HANDLERS / "responses.py")
    server = start_server(work, work / "store", ["responses=responses.mar"],
                          default_workers_per_model=1)
    yield server
    server.stop()


def responses_counted(server, status_class: str) -> float:
    text = httpx.get(f"{server.metrics_url}/metrics", timeout=60).text
    found = re.search(rf"^Requests{status_class}\{{[^}}]*\}} (\S+)$", text, re.MULTILINE)
    return float(found[1]) if found else 0.0


def ask(server, route: str, **answer) -> httpx.Response:
    return httpx.post(f"{server.inference_url}{route}", json={"status": 200, **answer}, timeout=60)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("headers", [
    {"X-Evil": "a\r\nSet-Cookie: stolen=1"},  # would split the response head
    {"X-Evil": "line\nbreak"},
    {"X-Evil": "snow \u2603"},  # outside Latin-1
    {"X Evil": "a space in the name"},
    {"X-Evil:": "a colon in the name"},
])
def test_a_handler_header_that_cannot_be_sent_is_a_json_500_naming_it(server, route, headers):
    before = responses_counted(server, "5XX"), responses_counted(server, "2XX")
    response = ask(server, route, headers=headers)
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["type"] == "InternalServerException"
    assert body["message"] == ("Handler set a response header that cannot be sent: "
                               f"{next(iter(headers))!r}")
    assert "set-cookie" not in response.headers
    after = responses_counted(server, "5XX"), responses_counted(server, "2XX")
    assert after == (before[0] + 1, before[1])


@pytest.mark.parametrize("route", ROUTES)
def test_a_content_type_that_cannot_be_sent_is_a_json_500(server, route):
    response = ask(server, route, content_type="text/plain\r\nX-Injected: 1")
    assert response.status_code == 500
    assert "'Content-Type'" in response.json()["message"]
    assert "x-injected" not in response.headers


@pytest.mark.parametrize("route", ROUTES)
def test_a_header_with_latin1_and_tabs_is_sent_as_set(server, route):
    response = ask(server, route, headers={"X-Fine": "caf\u00e9\tok"})
    assert response.status_code == 200
    assert dict(response.headers.raw)[b"x-fine"] == "caf\u00e9\tok".encode("latin-1")
