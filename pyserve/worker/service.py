"""Runs one batch through the handler and turns the outcome into one result per request.

Failures are answered per request with TorchServe's codes and messages, and never end
the worker: the next batch is served as usual. A request whose body cannot be read is
answered 400 on its own; the rest of its batch still reaches the handler. An error that
repeats is logged in full once, then counted (pyserve.logs.RepeatedErrors).
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any, Callable

from pyserve.errors import error_body
from pyserve.logs import RepeatedErrors
from pyserve.worker.context import Context, RequestProcessor
from pyserve.worker.inputs import BadInput, build_row
from pyserve.worker.loader import EntryPoint
from pyserve.worker.metrics import MetricTypes
from pyserve.worker.outputs import encode_body

log = logging.getLogger("pyserve.worker")

JSON = "application/json"
STREAM_NEXT = "ts_stream_next"  # "true": a part of the answer; more follow
SendParts = Callable[[list], None]  # results with `more`, to send before the batch's answers


def _error(request: dict, code: int, message: str, type: str = "InternalServerException") -> list:
    return [request["id"], code, "", JSON, [], error_body(code, type, message)]


def _failure(error: Exception) -> tuple[int, str]:
    """TorchServe's answer to a handler that raised: (status, message)."""
    code = getattr(error, "error_code", None)
    # Duck-typed so that both pyserve's and the real torchserve's PredictionException count.
    if type(error).__name__ == "PredictionException" and isinstance(code, int):
        return (507 if code == 413 else code), str(getattr(error, "message", error))
    if isinstance(error, MemoryError) or "CUDA" in str(error):
        return 507, "Out of resources"
    return 503, "Prediction failed"


class Service:
    def __init__(self, entry_point: EntryPoint, context: Context, decode_json: bool = True):
        self.entry_point = entry_point
        self.context = context
        self.decode_json = decode_json
        self._errors = RepeatedErrors(log)  # a failing model fails every batch: log it once
        # TorchServe's per-batch PredictionTime, looked up once rather than per batch.
        self._prediction_time = None
        if context.metrics is not None:
            self._prediction_time = context.metrics.add_metric_to_cache(
                "PredictionTime", "ms", ["ModelName", "Level"], MetricTypes.GAUGE)
            self._model_dimensions = [context.model_name, "Model"]

    def predict(self, requests: list[dict], send_parts: SendParts | None = None) -> list[list]:
        """One result per request. `send_parts` sends the parts a handler streams with
        send_intermediate_predict_response (pyserve.worker.intermediate) before it returns."""
        answers: dict[int, list] = {}
        accepted: list[dict] = []
        data: list[dict] = []
        processors: list[RequestProcessor] = []
        for request in requests:
            try:
                row, headers = build_row(request, self.decode_json)
            except BadInput as error:
                answers[request["id"]] = _error(request, 400, str(error), "BadRequestException")
                continue
            except Exception:  # noqa: BLE001 - one unreadable request must not take the worker down
                self._errors.error("reading request %s failed", request.get("request_id"),
                                   exc_info=True)
                answers[request["id"]] = _error(request, 500, "Failed to read the request",
                                                "InternalServerException")
                continue
            accepted.append(request)
            data.append(row)
            processors.append(RequestProcessor(headers))
        if accepted:
            for request, result in zip(accepted, self._run(accepted, data, processors, send_parts)):
                answers[request["id"]] = result
        return [answers[request["id"]] for request in requests]

    def _run(self, requests: list[dict], data: list[dict], processors: list,
             send_parts: SendParts | None) -> list[list]:
        context = self.context
        context.request_ids = {idx: request["request_id"] for idx, request in enumerate(requests)}
        context.request_processor = processors
        if context.metrics is not None:
            context.metrics.request_ids = context.request_ids
        context.part_sender = None
        if send_parts is not None:
            context.part_sender = functools.partial(self._send_parts, requests, processors,
                                                    send_parts)

        started = time.perf_counter()
        try:
            outputs = self.entry_point.handle(data, context)
        except Exception as error:  # noqa: BLE001 - any handler failure is answered, not fatal
            self._errors.error("handler failed on a batch of %d", len(requests), exc_info=True)
            code, message = _failure(error)
            return [_error(request, code, message) for request in requests]
        finally:
            context.part_sender = None

        if not isinstance(outputs, list):
            self._errors.warning("handler returned %s, not a list", type(outputs).__name__)
            return [_error(request, 503, "Invalid model predict output") for request in requests]
        if len(outputs) != len(requests):
            self._errors.warning("handler returned %d answers for %d requests", len(outputs),
                                 len(requests))
            return [_error(request, 503, "number of batch response mismatched") for request in requests]
        try:
            bodies = [encode_body(item) for item in outputs]
        except (TypeError, ValueError, RecursionError):
            self._errors.error("handler returned a value that cannot be serialised", exc_info=True)
            return [_error(request, 503, "Unsupported model output data type.") for request in requests]
        if self._prediction_time is not None:
            self._prediction_time.add_or_update(round((time.perf_counter() - started) * 1000, 2),
                                                self._model_dimensions)
        self._stream_next(outputs, processors)
        return [
            self._result(request, processor, body)
            for request, processor, body in zip(requests, processors, bodies)
        ]

    def _stream_next(self, outputs: list, processors: list) -> None:
        """Whether each answer is a part (`ts_stream_next: true`) or the last, as TorchServe's
        create_predict_response decides: under continuous batching the request's stopping
        criterion says whether its handler has more to send (False: the request runs again),
        is done (True) or never streamed (None); otherwise the return value is the last part
        of whatever send_intermediate_predict_response sent."""
        criteria = self.context.stopping_criteria
        for idx, output in enumerate(outputs):
            if criteria:
                stop = criteria[idx](output)
                if stop is not None:
                    processors[idx].add_response_property(STREAM_NEXT, "false" if stop else "true")
            elif processors[idx].get_response_header(STREAM_NEXT) == "true":
                processors[idx].add_response_property(STREAM_NEXT, "false")

    def _send_parts(self, requests: list[dict], processors: list, send_parts: SendParts,
                    outputs: list | None, req_id_map: dict) -> None:
        """A part of each answer `req_id_map` names (index -> request id), sent at once."""
        parts = []
        for idx in req_id_map:
            processors[idx].add_response_property(STREAM_NEXT, "true")
            body = b"error" if outputs is None else encode_body(outputs[idx])
            parts.append(self._result(requests[idx], processors[idx], body))
        send_parts(parts)

    @staticmethod
    def _result(request: dict, processor: RequestProcessor, body: bytes) -> list[Any]:
        status = processor.get_response_status_code()
        # The server checks every result's types (an int status, a str phrase) and treats
        # a worker that breaks them as broken, so a handler's odd values are caught here.
        if type(status) is not int or not -(1 << 63) <= status < (1 << 64):
            return _error(request, 500, f"Handler set an invalid HTTP status: {status!r}")
        content_type = None
        extra = []
        for key, value in processor.get_response_headers().items():
            if str(key).lower() == "content-type":
                content_type = str(value)
            else:
                extra.append([str(key), str(value)])
        phrase = str(processor.get_response_status_phrase() or "")
        if processor.get_response_header(STREAM_NEXT) == "true":
            return [request["id"], status, phrase, content_type, extra, body, True]
        return [request["id"], status, phrase, content_type, extra, body]
