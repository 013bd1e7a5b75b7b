"""Turns the requests of one batch into the ``data`` list a TorchServe handler expects.

Each request becomes one dict: a raw body under ``"body"``, decoded by its content type:
the parsed JSON for ``application/json`` (the raw bytes when it does not parse), a str
for ``text/*``, bytes otherwise.
"""

from __future__ import annotations

import json
from typing import Any


def media_type(content_type: str) -> str:
    """`application/json; charset=utf-8` -> `application/json`."""
    return content_type.split(";", 1)[0].strip().lower()


def decode_value(content_type: str, value: bytes) -> Any:
    if content_type == "application/json":
        try:
            return json.loads(value)
        except ValueError:
            return value
    if content_type.startswith("text"):
        return value.decode("utf-8", errors="replace")
    return value


def request_headers(raw_headers: list) -> dict[str, str]:
    """HTTP headers as a dict; for a repeated header the last value wins, as in TorchServe."""
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in raw_headers}


def build_row(request: dict) -> tuple[dict, dict]:
    """One request -> (its entry in `data`, the headers the handler sees for it)."""
    content_type = media_type(request["content_type"])
    parameters = [("body", content_type, request["body"])]
    row = {}
    headers: dict[str, Any] = {}
    for name, part_type, value in parameters:
        row[name] = decode_value(part_type, value)
        headers[name] = {"content-type": part_type}
    headers.update(request_headers(request["headers"]))
    return row, headers
