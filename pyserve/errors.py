"""Error bodies in TorchServe's shape, shared by the frontend and the workers.

TorchServe answers every error with ``{"code", "type", "message"}`` pretty-printed with
a two-space indent and a trailing newline; clients parse it, so pyserve writes the same.
"""

from __future__ import annotations

import json


def error_body(code: int, type: str, message: str) -> bytes:
    return (json.dumps({"code": code, "type": type, "message": message}, indent=2) + "\n").encode()


class ServeError(Exception):
    """An error with the HTTP status and TorchServe exception type it is answered with."""

    def __init__(self, code: int, type: str, message: str,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.code = code
        self.type = type
        self.message = message
        self.headers = headers or {}  # sent with the error answer, e.g. Retry-After

    def body(self) -> bytes:
        return error_body(self.code, self.type, self.message)


class ModelNotFound(ServeError):
    def __init__(self, message: str):
        super().__init__(404, "ModelNotFoundException", message)


class ModelVersionNotFound(ServeError):
    def __init__(self, message: str):
        super().__init__(404, "ModelVersionNotFoundException", message)


class BadRequest(ServeError):
    def __init__(self, message: str):
        super().__init__(400, "BadRequestException", message)


class ServiceUnavailable(ServeError):
    def __init__(self, message: str):
        super().__init__(503, "ServiceUnavailableException", message)


class RetryLater(ServeError):
    """A 503 that tells the client when to try again."""

    RETRY_AFTER_SECONDS = 1

    def __init__(self, message: str):
        super().__init__(503, "ServiceUnavailableException", message,
                         {"Retry-After": str(self.RETRY_AFTER_SECONDS)})


class QueueFull(RetryLater):
    """A model's queue holds job_queue_size requests: answered at once, with when to retry."""


class InternalServerError(ServeError):
    def __init__(self, message: str):
        super().__init__(500, "InternalServerException", message)
