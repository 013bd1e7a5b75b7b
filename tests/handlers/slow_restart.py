"""Loads at once the first time, then takes 30 s to load each time it is restarted, so a test
can keep a model without a ready worker for a while."""

import os
import time

MARKER = "started-once"


def handle(data, context):
    if data is None:
        if os.path.exists(MARKER):
            time.sleep(30)
        with open(MARKER, "w"):
            pass
        return None
    return [row.get("body") or b"" for row in data]
