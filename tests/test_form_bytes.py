"""A urlencoded form reaches the handler as TorchServe 0.12 hands it over: each field's value as
the exact bytes sent, whatever they are. The expected values below are what TorchServe 0.12.0
gave a handler for the same bodies."""

from __future__ import annotations

import httpx
import pytest

from helpers import HANDLERS, archive_model, start_server
from pyserve.worker.urlencoded import parse_form

FORM = {"content-type": "application/x-www-form-urlencoded"}
EVERY_BYTE = bytes(range(256))


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    store = tmp_path_factory.mktemp("form_bytes")
    archive_model(store, "inputs", HANDLERS / "inputs_probe.py")
    server = start_server(tmp_path_factory.mktemp("form_server"), store, ["inputs=inputs.mar"],
                          default_workers_per_model=1)
    with httpx.Client(base_url=server.inference_url, timeout=60) as client:
        yield client
    server.stop()


def fields(client: httpx.Client, body: bytes) -> dict:
    answer = client.post("/predictions/inputs", content=body, headers=FORM)
    assert answer.status_code == 200, answer.text
    return answer.json()["fields"]


def test_a_field_carrying_every_byte_percent_encoded_reaches_the_handler_as_those_bytes(client):
    body = b"data=" + "".join(f"%{byte:02X}" for byte in EVERY_BYTE).encode()
    assert fields(client, body) == {"data": {"type": "bytes", "value": EVERY_BYTE.hex()}}


def test_bytes_sent_unencoded_in_a_field_reach_the_handler_unchanged(client):
    assert fields(client, b"data=\xff\xfe\x00\xc3\xa9") == {
        "data": {"type": "bytes", "value": "fffe00c3a9"}}


@pytest.mark.parametrize("body, expected", [
    (b"a=x+y%2B", [("a", b"x y+")]),  # "+" is a space, "%2B" a plus
    (b"a=%e9%E9", [("a", b"\xe9\xe9")]),  # hex digits in either case
    (b"a=1&a=2", [("a", b"1"), ("a", b"2")]),  # (the handler sees the last)
    (b"a==b", [("a", b"=b")]),
    (b"a=x;b=y", [("a", b"x;b=y")]),  # only "&" separates fields
    (b"a=&b=", [("a", b""), ("b", b"")]),
    (b"a=1&novalue&b=2", [("a", b"1"), ("novalue", b""), ("b", b"2")]),
    (b"a=1&novalue", [("a", b"1")]),  # a name without "=" that ends the body is no field
    (b"a=x&", [("a", b"x")]),
    (b"", []),
    (b"a=x\r\nb=y", [("a", b"x")]),  # a line break ends the form
    (b"a=x\ny", [("a", b"x")]),
    (b"a=x\r", [("a", b"x")]),
    (b"a=x%0D%0A", [("a", b"x\r\n")]),
    (b"%C3%A9=x", [("\u00e9", b"x")]),  # names are UTF-8 text
    (b"\xc3\xa9=x", [("\u00e9", b"x")]),
    (b"\xff\xfe=1", [("\ufffd\ufffd", b"1")]),
    (b"a%3Db=c", [("a=b", b"c")]),
    (b"a%2B+b=1", [("a+ b", b"1")]),
    (b" a =1", [("a", b"1")]),  # names are stripped, CR and tab become spaces, LF goes
    (b"\ta\tb=1", [("a b", b"1")]),
    (b"%0Aa%0A=1", [("a", b"1")]),
    (b"a\r\n=1", [("a", b"1")]),
])
def test_urlencoded_forms_are_read_as_torchserve_reads_them(body, expected):
    assert parse_form(body) == expected


@pytest.mark.parametrize("body, expected", [
    (b"a=%zz", [("a", b"%zz")]),  # a "%" without two hex digits stays as written
    (b"a=x%", [("a", b"x%")]),
    (b"&a=1", [("a", b"1")]),  # a field without a name is left out
    (b"=x&a=1", [("a", b"1")]),
    (b"a=x\ry", [("a", b"x\ry")]),  # a CR inside a value is kept
])
def test_forms_torchserve_refuses_are_served(body, expected):
    assert parse_form(body) == expected
