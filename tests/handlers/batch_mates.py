"""Answers each request with the request ids of its whole batch, so a test sees which requests
were batched together; b"sleep:<seconds>" keeps the worker busy that long first."""

import json
import time


def handle(data, context):
    if data is None:
        return None
    for row in data:
        body = bytes(row.get("body") or b"")
        if body.startswith(b"sleep:"):
            time.sleep(float(body[6:]))
    mates = [context.get_request_id(index) for index in range(len(data))]
    return [json.dumps(mates) for _ in data]
