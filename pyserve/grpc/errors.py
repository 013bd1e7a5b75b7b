"""gRPC's answer to each error: one table, from the HTTP status the REST API answers the same
error with to TorchServe's gRPC status code (its GRPCUtils.getGRPCStatusCode), so that the
two APIs always agree.

The details are the message, then TorchServe's exception class on a line of its own, as
TorchServe's `augmentDescription` writes them; StreamPredictions2 carries the same in each
answer's `status` (a google.rpc.Status whose ErrorInfo reason is the class), as TorchServe
does, so that one failed request does not end the stream.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from pyserve.errors import ServeError
from pyserve.frames import Result

_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    416: grpc.StatusCode.OUT_OF_RANGE,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
_ARCHIVE_PACKAGE = {
    "ModelNotFoundException": "org.pytorch.serve.archive.model",
    "ModelVersionNotFoundException": "org.pytorch.serve.archive.model",
    "ModelException": "org.pytorch.serve.archive.model",
    "DownloadArchiveException": "org.pytorch.serve.archive",
}
# TorchServe names every failure a worker reports so, whatever its status.
WORKER_FAILURE = "org.pytorch.serve.http.InternalServerException"


def status_code(http_status: int) -> grpc.StatusCode:
    if http_status in _CODES:
        return _CODES[http_status]
    if 200 <= http_status < 300:
        return grpc.StatusCode.OK
    if 400 <= http_status < 500:
        return grpc.StatusCode.FAILED_PRECONDITION
    if 500 <= http_status < 600:
        return grpc.StatusCode.INTERNAL
    return grpc.StatusCode.UNKNOWN


def exception_class(type: str) -> str:
    """TorchServe's Java class for one of its exception types (ServeError.type)."""
    return f"{_ARCHIVE_PACKAGE.get(type, 'org.pytorch.serve.http')}.{type}"


@dataclass(frozen=True)
class Failure:
    code: grpc.StatusCode
    message: str
    reason: str  # TorchServe's exception class

    @classmethod
    def of(cls, error: ServeError) -> "Failure":
        return cls(status_code(error.code), error.message, exception_class(error.type))

    def details(self) -> str:
        return f"{self.message}\n{self.reason}"

    def status(self) -> status_pb2.Status:
        info = any_pb2.Any()
        info.Pack(error_details_pb2.ErrorInfo(reason=self.reason))
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=[info])

    async def abort(self, context: grpc.aio.ServicerContext) -> None:
        await context.abort(self.code, self.details())


def failure_of(result: Result) -> Failure | None:
    """The failure a result reports, if it is one: an error status whose body is a
    TorchServe error (`{"code", "type", "message"}`). A handler's own status on its own body
    is its answer, as TorchServe's gRPC API sends it."""
    if result.status < 400 or not result.body.startswith(b"{"):
        return None
    try:
        error = json.loads(result.body)
    except ValueError:
        return None
    if (not isinstance(error, dict) or error.keys() != {"code", "type", "message"}
            or error["code"] != result.status):
        return None
    return Failure(status_code(result.status), str(error["message"]), WORKER_FAILURE)
