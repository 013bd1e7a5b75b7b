"""Runs one batch through the handler and turns the outcome into one result per request.

Failures are answered per request with TorchServe's codes and messages, and never end
the worker: the next batch is served as usual.
"""

from __future__ import annotations

import logging
from typing import Any

from pyserve.errors import error_body
from pyserve.worker.context import Context, RequestProcessor
from pyserve.worker.inputs import build_row
from pyserve.worker.loader import EntryPoint
from pyserve.worker.outputs import encode_body

log = logging.getLogger("pyserve.worker")

JSON = "application/json"


def _error_results(requests: list[dict], code: int, message: str) -> list[list]:
    body = error_body(code, "InternalServerException", message)
    return [[request["id"], code, "", JSON, [], body] for request in requests]


def _is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, MemoryError) or "CUDA" in str(error)


class Service:
    def __init__(self, entry_point: EntryPoint, context: Context):
        self.entry_point = entry_point
        self.context = context

    def predict(self, requests: list[dict]) -> list[list]:
        context = self.context
        data = []
        processors = []
        for request in requests:
            row, headers = build_row(request)
            data.append(row)
            processors.append(RequestProcessor(headers))
        context.request_ids = {idx: request["request_id"] for idx, request in enumerate(requests)}
        context.request_processor = processors

        try:
            outputs = self.entry_point.handle(data, context)
        except Exception as error:  # noqa: BLE001 - any handler failure is answered, not fatal
            log.exception("handler failed on a batch of %d", len(requests))
            if _is_out_of_memory(error):
                return _error_results(requests, 507, "Out of resources")
            return _error_results(requests, 503, "Prediction failed")

        if not isinstance(outputs, list):
            return _error_results(requests, 503, "Invalid model predict output")
        if len(outputs) != len(requests):
            return _error_results(requests, 503, "number of batch response mismatched")
        try:
            bodies = [encode_body(item) for item in outputs]
        except (TypeError, ValueError):
            log.exception("handler returned a value that cannot be serialised")
            return _error_results(requests, 503, "Unsupported model output data type.")
        return [
            self._result(request, processor, body)
            for request, processor, body in zip(requests, processors, bodies)
        ]

    @staticmethod
    def _result(request: dict, processor: RequestProcessor, body: bytes) -> list[Any]:
        headers = processor.get_response_headers()
        content_type = None
        extra = []
        for key, value in headers.items():
            if str(key).lower() == "content-type":
                content_type = str(value)
            else:
                extra.append([str(key), str(value)])
        phrase = processor.get_response_status_phrase() or ""
        return [request["id"], processor.get_response_status_code(), phrase, content_type, extra, body]
