"""Records every call it gets, so a test can see the load-time call with data=None."""

import json
import os

calls = []


def handle(data, context):
    calls.append(None if data is None else len(data))
    if data is None:
        return None
    return [json.dumps({"pid": os.getpid(), "calls": calls}) for _ in data]
