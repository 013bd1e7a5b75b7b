"""Open Inference Protocol tensors over REST: the JSON request, the binary tensor data
extension, and the response.

A request's tensors are checked here (shape, datatype, element count, value types) so that a
malformed one is answered 400 before it joins a batch. Binary inputs become JSON data, so a
worker (TorchServe's kservev2 envelope) always reads one format; outputs the client asks for
as binary become bytes on the way out. Binary data is little-endian, row-major; a BYTES
element is a 4-byte length and its bytes.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

# datatype -> struct code; BYTES has no fixed size
CODES = {
    "BOOL": "?", "UINT8": "B", "UINT16": "H", "UINT32": "I", "UINT64": "Q",
    "INT8": "b", "INT16": "h", "INT32": "i", "INT64": "q",
    "FP16": "e", "FP32": "f", "FP64": "d", "BYTES": "",
}
NUMBERS = {int, float}
LENGTH = struct.Struct("<I")


class TensorError(Exception):
    """A request (400) or an answer (500) that is not a well-formed inference message."""

    def __init__(self, message: str, code: int = 400):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class InferRequest:
    id: str | None
    body: bytes  # the request as JSON, all tensors' data inline: what the worker reads
    outputs: dict[str, bool | None]  # requested output -> binary (None: as binary_data_output says)
    binary_output: bool  # the request's binary_data_output


def _object(value: Any, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TensorError(f"{what} must be a JSON object")
    return value


def _flag(parameters: dict, key: str, what: str) -> bool | None:
    value = parameters.get(key)
    if value is not None and not isinstance(value, bool):
        raise TensorError(f"{what}: parameter {key} must be true or false")
    return value


def flatten(data: list) -> list:
    """Nested lists' elements, in row-major order."""
    flat: list = []
    for item in data:
        if isinstance(item, list):
            flat.extend(flatten(item))
        else:
            flat.append(item)
    return flat


def _integer_range(datatype: str) -> tuple[int, int]:
    bits = struct.calcsize(CODES[datatype]) * 8
    if datatype.startswith("U"):
        return 0, (1 << bits) - 1
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def _check_values(values: list, datatype: str, what: str) -> None:
    """Each value must be of the datatype's JSON kind (and an integer within its range)."""
    kinds = set(map(type, values))
    if datatype == "BYTES":
        wrong = kinds - {str}
        expected = "strings"
    elif datatype == "BOOL":
        wrong = kinds - {bool}
        expected = "true or false"
    elif datatype.startswith("FP"):
        wrong = kinds - NUMBERS
        expected = "numbers"
    else:
        wrong = kinds - {int}
        expected = "integers"
    if wrong:
        found = sorted(kind.__name__ for kind in wrong)
        raise TensorError(f"{what}: {datatype} data must be {expected}, got {', '.join(found)}")
    if values and kinds == {int}:
        lowest, highest = _integer_range(datatype)
        if min(values) < lowest or max(values) > highest:
            raise TensorError(f"{what}: a value is outside the range of {datatype}")


def _decode(blob: memoryview, datatype: str, count: int, what: str) -> list:
    if datatype != "BYTES":
        size = struct.calcsize(CODES[datatype])
        if len(blob) != count * size:
            raise TensorError(f"{what}: binary_data_size is {len(blob)} bytes; {count} "
                              f"{datatype} elements take {count * size}")
        return list(struct.unpack(f"<{count}{CODES[datatype]}", blob))
    values, offset = [], 0
    while offset < len(blob):
        if offset + 4 > len(blob):
            raise TensorError(f"{what}: BYTES element {len(values)} is cut short")
        (length,) = LENGTH.unpack_from(blob, offset)
        element = blob[offset + 4:offset + 4 + length]
        if len(element) != length:
            raise TensorError(f"{what}: BYTES element {len(values)} is cut short")
        try:
            values.append(str(element, "utf-8"))
        except UnicodeDecodeError:
            raise TensorError(f"{what}: BYTES element {len(values)} is not UTF-8 text, which "
                              "is all pyserve hands to handlers as JSON") from None
        offset += 4 + length
    if len(values) != count:
        raise TensorError(f"{what}: binary data holds {len(values)} BYTES elements; shape "
                          f"needs {count}")
    return values


def _read_input(tensor: Any, index: int, binary: memoryview, offset: int) -> int:
    """Checks one input (filling in its binary data); returns the offset past its binary data."""
    if not isinstance(tensor, dict):
        raise TensorError(f"inputs[{index}] must be a JSON object")
    name = tensor.get("name")
    if not isinstance(name, str):
        raise TensorError(f"inputs[{index}] needs a name (a string)")
    what = f"input {name!r}"
    datatype = tensor.get("datatype")
    if datatype not in CODES:
        raise TensorError(f"{what}: datatype must be one of {', '.join(CODES)}, got {datatype!r}")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or any(type(d) is not int or d < 0 for d in shape):
        raise TensorError(f"{what}: shape must be a list of integers, none negative")
    count = math.prod(shape)
    parameters = _object(tensor.get("parameters"), f"{what}: parameters")
    size = parameters.get("binary_data_size")
    if size is not None:
        if type(size) is not int or size < 0:
            raise TensorError(f"{what}: binary_data_size must be an integer, not negative")
        if "data" in tensor:
            raise TensorError(f"{what} has both data and binary_data_size")
        if offset + size > len(binary):
            raise TensorError(f"{what}: binary_data_size is {size} bytes, but only "
                              f"{len(binary) - offset} bytes of binary data are left")
        tensor["data"] = _decode(binary[offset:offset + size], datatype, count, what)
        del parameters["binary_data_size"]
        return offset + size
    data = tensor.get("data")
    if not isinstance(data, list):
        raise TensorError(f"{what} needs data (a list) or a binary_data_size parameter")
    try:
        values = flatten(data) if list in set(map(type, data)) else data
    except RecursionError:
        raise TensorError(f"{what}: data is nested too deep") from None
    if len(values) != count:
        raise TensorError(f"{what}: shape {shape} holds {count} elements, data has {len(values)}")
    _check_values(values, datatype, what)
    return offset


def _requested_outputs(outputs: Any) -> dict[str, bool | None]:
    if outputs is None:
        return {}
    if not isinstance(outputs, list):
        raise TensorError("outputs must be a list")
    requested: dict[str, bool | None] = {}
    for index, output in enumerate(outputs):
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise TensorError(f"outputs[{index}] must be an object with a name (a string)")
        what = f"output {output['name']!r}"
        parameters = _object(output.get("parameters"), f"{what}: parameters")
        if "classification" in parameters:
            raise TensorError(f"{what}: the classification extension is not supported")
        requested[output["name"]] = _flag(parameters, "binary_data", what)
    return requested


def read_request(body: bytes, header_length: str | None) -> InferRequest:
    """The request, checked. `header_length`: Inference-Header-Content-Length, when the body
    carries binary tensor data after its JSON."""
    binary = memoryview(b"")
    if header_length is not None:
        digits = header_length.isascii() and header_length.isdigit()
        if not digits or int(header_length) > len(body):
            raise TensorError(f"Inference-Header-Content-Length is {header_length!r}; the body "
                              f"has {len(body)} bytes")
        split = int(header_length)
        binary = memoryview(body)[split:]
        body = body[:split]
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as error:
        raise TensorError(f"The inference request is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise TensorError("The inference request must be a JSON object")
    return read_document(document, binary, None if binary else body)


def read_document(document: dict, binary: memoryview, body: bytes | None = None) -> InferRequest:
    """A parsed request, checked, each input's binary data (`binary`, in input order) turned
    into its JSON data. `body`: the request's JSON as it came, which the worker gets as it is;
    None to write it anew (gRPC's requests, which come as messages)."""
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise TensorError("id must be a string")
    parameters = _object(document.get("parameters"), "parameters")
    binary_output = bool(_flag(parameters, "binary_data_output", "the request"))
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise TensorError("inputs must be a non-empty list of tensors")
    offset = 0
    for index, tensor in enumerate(inputs):
        offset = _read_input(tensor, index, binary, offset)
    if offset != len(binary):
        raise TensorError(f"The body has {len(binary) - offset} bytes of binary data that no "
                          "input's binary_data_size accounts for")
    outputs = _requested_outputs(document.get("outputs"))
    if body is None:
        body = json.dumps(document, separators=(",", ":")).encode()
    return InferRequest(request_id, body, outputs, binary_output)


def encode_output(output: dict) -> bytes:
    """An output's data as binary tensor data."""
    name, datatype = output.get("name"), output.get("datatype")
    data = output.get("data")
    if datatype not in CODES or not isinstance(data, list):
        raise TensorError(f"Output {name!r} cannot be sent as binary: it needs a datatype and "
                          "data", 500)
    try:
        values = flatten(data)
    except RecursionError:
        raise TensorError(f"Output {name!r} is nested too deep", 500) from None
    if datatype == "BYTES":
        parts = []
        for value in values:
            element = value if isinstance(value, bytes) else (
                value if isinstance(value, str) else json.dumps(value)).encode()
            parts += [LENGTH.pack(len(element)), element]
        return b"".join(parts)
    try:
        return struct.pack(f"<{len(values)}{CODES[datatype]}", *values)
    except struct.error as error:
        raise TensorError(f"Output {name!r} cannot be sent as binary {datatype}: {error}",
                          500) from None


def answer_document(answer: bytes, request: InferRequest) -> tuple[dict, bool] | None:
    """The model's answer as an inference response, with the request's id and only the
    outputs it named, and whether that changed it. None when the answer is no inference
    response (a handler that does not speak the protocol)."""
    try:
        document = json.loads(answer)
    except (ValueError, RecursionError):
        return None
    if not isinstance(document, dict) or not isinstance(document.get("outputs"), list) or not all(
            isinstance(output, dict) for output in document["outputs"]):
        return None
    changed = False
    if request.id is not None and document.get("id") != request.id:
        document["id"] = request.id
        changed = True
    outputs = document["outputs"]
    if request.outputs:
        by_name = {output.get("name"): output for output in outputs}
        missing = [name for name in request.outputs if name not in by_name]
        if missing:
            raise TensorError(f"The model has no output {missing[0]!r}; it answered "
                              f"{', '.join(repr(name) for name in by_name)}")
        document["outputs"] = [by_name[name] for name in request.outputs]
        changed = True
    return document, changed


def write_response(answer: bytes, request: InferRequest) -> tuple[bytes, int | None] | None:
    """The model's answer as the request asked for it: (body, length of its JSON part when
    binary data follows). None when the answer is no inference response: it then goes out as
    the handler wrote it."""
    answered = answer_document(answer, request)
    if answered is None:
        return None
    document, changed = answered
    outputs = document["outputs"]
    blobs = []
    for output in outputs:
        binary = request.outputs.get(output.get("name"))
        if binary if binary is not None else request.binary_output:
            blob = encode_output(output)
            del output["data"]
            parameters = output.get("parameters")
            output["parameters"] = {**(parameters if isinstance(parameters, dict) else {}),
                                    "binary_data_size": len(blob)}
            blobs.append(blob)
    if not changed and not blobs:
        return answer, None
    header = json.dumps(document, separators=(",", ":")).encode()
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)
