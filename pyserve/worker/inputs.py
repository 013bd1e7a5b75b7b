"""Turns the requests of one batch into the ``data`` list a TorchServe handler expects.

Each request becomes one dict. A multipart or urlencoded form gives one entry per field,
named after it; any other body is one entry named ``"body"``. Each value is decoded by its
content type: the parsed JSON for ``application/json`` (the raw bytes when it does not
parse), a str for ``text/*``, bytes otherwise: a urlencoded field's value is bytes, exactly
as TorchServe hands it over (pyserve.worker.urlencoded). Forms are parsed here, in the
worker, so that the frontend's one core spends nothing on them.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from pyserve.worker.urlencoded import parse_form


class BadInput(ValueError):
    """A request body that cannot be read as what its content type says."""


def media_type(content_type: str) -> str:
    """`application/json; charset=utf-8` -> `application/json`."""
    return content_type.split(";", 1)[0].strip().lower()


def decode_value(content_type: str, value: bytes, decode_json: bool = True) -> Any:
    if content_type == "application/json" and decode_json:
        try:
            return json.loads(value)
        except (ValueError, RecursionError):  # RecursionError: nested deeper than Python goes
            return value
    if content_type.startswith("text"):
        return value.decode("utf-8", errors="replace")
    return value


def _multipart_fields(boundary: bytes, body: bytes) -> list[tuple[str, str, bytes]]:
    fields: list[tuple[str, str, bytes]] = []
    headers: dict[bytes, bytes] = {}
    header_name = bytearray()
    header_value = bytearray()
    data = bytearray()

    def on_part_begin():
        headers.clear()
        data.clear()

    def on_header_field(chunk, start, end):
        header_name.extend(chunk[start:end])

    def on_header_value(chunk, start, end):
        header_value.extend(chunk[start:end])

    def on_header_end():
        headers[bytes(header_name).lower()] = bytes(header_value)
        header_name.clear()
        header_value.clear()

    def on_part_data(chunk, start, end):
        data.extend(chunk[start:end])

    def on_part_end():
        _, params = parse_options_header(headers.get(b"content-disposition", b""))
        if b"name" not in params:
            raise BadInput("multipart part without a name in its Content-Disposition")
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        fields.append((params[b"name"].decode("utf-8", errors="replace"),
                       media_type(content_type), bytes(data)))

    try:
        # The constructor refuses a boundary over 256 bytes: inside the try, or one request
        # with a long boundary would kill every worker it is tried on.
        parser = MultipartParser(boundary, {
            "on_part_begin": on_part_begin, "on_header_field": on_header_field,
            "on_header_value": on_header_value, "on_header_end": on_header_end,
            "on_part_data": on_part_data, "on_part_end": on_part_end,
        })
        parser.write(body)
        parser.finalize()
    except BadInput:
        raise
    except Exception as error:  # python-multipart raises several types for malformed input
        reason = error.args[0] if error.args else type(error).__name__
        raise BadInput(f"malformed multipart body: {reason}") from None
    if body and parser.state != MultipartState.END:
        # finalize() accepts a body cut short; its last part would be silently dropped.
        raise BadInput("malformed multipart body: it ends before its closing boundary")
    return fields


@lru_cache(maxsize=256)
def _parsed_content_type(content_type: str) -> tuple[str, bytes | None]:
    """(media type, multipart boundary): a batch's requests mostly share one content type."""
    media, options = parse_options_header(content_type)
    return media.decode("latin-1").lower(), options.get(b"boundary")


def parameters(content_type: str, body: bytes) -> list[tuple[str, str, bytes]]:
    """(name, content type, raw value) for each input parameter of one request."""
    media, boundary = _parsed_content_type(content_type)
    if media == "multipart/form-data":
        if not boundary:
            raise BadInput("multipart/form-data without a boundary")
        return _multipart_fields(boundary, body)
    if media == "application/x-www-form-urlencoded":
        return [(name, "", value) for name, value in parse_form(body)]
    return [("body", media, body)]


def request_headers(raw_headers: list) -> dict[str, str]:
    """HTTP headers as a dict; for a repeated header the last value wins, as in TorchServe."""
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in raw_headers}


def build_row(request: dict, decode_json: bool = True) -> tuple[dict, dict]:
    """One request -> (its entry in `data`, the headers the handler sees for it)."""
    row: dict[str, Any] = {}
    headers: dict[str, Any] = {}
    for name, content_type, value in parameters(request["content_type"], request["body"]):
        row[name] = decode_value(content_type, value, decode_json)
        headers[name] = {"content-type": content_type}
    headers.update(request_headers(request["headers"]))
    return row, headers
