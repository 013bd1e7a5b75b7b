"""Error bodies in TorchServe's shape, shared by the frontend and the workers.

TorchServe answers every error with ``{"code", "type", "message"}`` pretty-printed with
a two-space indent and a trailing newline; clients parse it, so pyserve writes the same.
"""

from __future__ import annotations

import json


def error_body(code: int, type: str, message: str) -> bytes:
    return (json.dumps({"code": code, "type": type, "message": message}, indent=2) + "\n").encode()


def status_body(message: str) -> bytes:
    return (json.dumps({"status": message}, indent=2) + "\n").encode()


class ServeError(Exception):
    """An error with the HTTP status and TorchServe exception type it is answered with."""

    def __init__(self, code: int, type: str, message: str):
        super().__init__(message)
        self.code = code
        self.type = type
        self.message = message

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


class InternalServerError(ServeError):
    def __init__(self, message: str):
        super().__init__(500, "InternalServerException", message)
