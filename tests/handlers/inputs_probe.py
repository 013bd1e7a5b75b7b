"""Describes what the handler received: each row's fields with their Python types, and headers."""

import json


def _describe(value):
    if isinstance(value, (bytes, bytearray)):
        return {"type": "bytes", "value": value.hex()}
    if isinstance(value, str):
        return {"type": "str", "value": value}
    return {"type": type(value).__name__, "value": value}


def handle(data, context):
    if data is None:
        return None
    answers = []
    for idx, row in enumerate(data):
        answers.append(json.dumps({
            "fields": {name: _describe(value) for name, value in row.items()},
            "x_probe": context.get_request_header(idx, "X-Probe"),
            "all_headers": sorted(k for k in context.get_all_request_header(idx)),
            "request_id": context.get_request_id(idx),
        }))
    return answers
