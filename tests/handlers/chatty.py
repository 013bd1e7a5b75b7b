"""Prints, logs and records a metric on every request, as handlers do to be observed."""

import logging
import sys

log = logging.getLogger(__name__)


def handle(data, context):
    if data is None:
        print("chatty loaded")
        return None
    print("chatty printed")
    print("chatty wrote to stderr", file=sys.stderr)
    log.info("chatty logged")
    context.metrics.add_counter("ChattyRequests", len(data))
    return ["ok" for _ in data]
