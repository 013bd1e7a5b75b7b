"""Echoes each body, or misbehaves as the body asks, so crashes and overload can be staged.

b"poison": the worker kills itself (SIGKILL) while running the batch.
b"sleep:<seconds>": the batch takes that long.
b"size:<bytes>": answers that many bytes.
Anything else is answered with itself after WORK_SECONDS, so a kill lands mid-batch.
"""

import os
import signal
import time

WORK_SECONDS = 0.002


def _answer(body):
    body = bytes(body)
    if body == b"poison":
        os.kill(os.getpid(), signal.SIGKILL)
    if body.startswith(b"sleep:"):
        time.sleep(float(body[6:]))
        return body
    if body.startswith(b"size:"):
        return b"x" * int(body[5:])
    time.sleep(WORK_SECONDS)
    return body


def handle(data, context):
    if data is None:
        return None
    return [_answer(row.get("data") or row.get("body") or b"") for row in data]
