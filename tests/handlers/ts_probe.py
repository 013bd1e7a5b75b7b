"""Says where the `ts` package it imports comes from."""

import json

import ts
import ts.context
from ts.torch_handler.base_handler import BaseHandler


def handle(data, context):
    if data is None:
        return None
    report = {
        "ts_file": ts.__file__,
        "context_is_pyserves": type(context) is ts.context.Context,
        "base_handler_module": BaseHandler.__module__,
    }
    return [json.dumps(report) for _ in data]
