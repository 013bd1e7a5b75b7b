"""What every envelope does with a batch: rows in for the handler, one answer out per request."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from pyserve.handlers.util import PredictionException


class BaseEnvelope(ABC):
    """TorchServe's contract: `parse_input` turns the batch into the handler's rows,
    `format_output` turns the handler's answers into one answer per request."""

    def __init__(self, handle_fn: Callable[[Any, Any], Any]):
        self._handle_fn = handle_fn
        self.context = None

    def handle(self, data: list, context) -> Any:
        self.context = context
        if data:
            data = self.parse_input(data)
        results = self._handle_fn(data, context)
        if results:
            results = self.format_output(results)
        return results

    @abstractmethod
    def parse_input(self, data: list) -> list: ...

    @abstractmethod
    def format_output(self, data: list) -> list: ...


def request_body(row: dict) -> dict:
    """A request's JSON document. Bytes when the worker did not parse it (no JSON content type,
    or decode_input_request=false): parsed here, as TorchServe's envelopes do."""
    body = row.get("data") or row.get("body")
    if isinstance(body, (bytes, bytearray)):
        try:
            body = json.loads(body)
        except ValueError as error:
            raise PredictionException(f"The request body is not JSON: {error}", 400) from None
    if not isinstance(body, dict):
        raise PredictionException("The request body is not a JSON object", 400)
    return body


def split(results: list, counts: list[int], unit: str) -> list[list]:
    """The handler's answers for each request, `counts[i]` rows having come from request i. A
    batch of one request gets all of them, however many, as in TorchServe."""
    if len(counts) == 1:
        return [results]
    if len(results) != sum(counts):
        raise PredictionException(f"number of batch response mismatched: the handler returned "
                                  f"{len(results)} answers for {sum(counts)} {unit}", 503)
    parts, start = [], 0
    for count in counts:
        parts.append(results[start:start + count])
        start += count
    return parts
