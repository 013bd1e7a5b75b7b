"""The Open Inference Protocol's gRPC messages as the REST protocol's JSON documents, and
back, so that one set of checks (pyserve.frontend.kserve.tensors) and one worker format (the
kservev2 envelope's JSON) serve both.

An input's data comes either in its typed `contents` or in `raw_input_contents` (one entry
per input, binary tensor data as REST's binary extension has it), never both in one request.
The outputs go back the same way: raw_output_contents for a request that sent raw inputs (as
tritonclient does; Triton always answers so), the typed `contents` for one that did not.
"""

from __future__ import annotations

from typing import Any

from pyserve.frontend.kserve.tensors import TensorError, encode_output, flatten
from pyserve.grpc.protos import grpc_predict_v2_pb2 as oip

# datatype -> its field of InferTensorContents; FP16 has none and comes raw only
CONTENTS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


def _parameters(parameters) -> dict[str, Any]:
    """An InferParameter map as JSON values."""
    return {key: getattr(value, value.WhichOneof("parameter_choice") or "string_param")
            for key, value in parameters.items()}


def _data(tensor: oip.ModelInferRequest.InferInputTensor) -> list:
    what = f"input {tensor.name!r}"
    if tensor.datatype == "FP16":
        raise TensorError(f"{what}: FP16 data must come in raw_input_contents")
    if tensor.datatype not in CONTENTS:
        return []  # its datatype is refused when the tensors are checked
    values = list(getattr(tensor.contents, CONTENTS[tensor.datatype]))
    if tensor.datatype != "BYTES":
        return values
    try:
        return [value.decode("utf-8") for value in values]
    except UnicodeDecodeError:
        raise TensorError(f"{what}: a BYTES element is not UTF-8 text, which is all pyserve "
                          "hands to handlers as JSON") from None


def request_document(request: oip.ModelInferRequest) -> tuple[dict, bytes]:
    """The request as REST's JSON document, and the binary data its inputs' binary_data_size
    parameters account for."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise TensorError(f"raw_input_contents has {len(raw)} entries for "
                          f"{len(request.inputs)} inputs")
    inputs = []
    for index, tensor in enumerate(request.inputs):
        document: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype,
                                    "shape": list(tensor.shape)}
        parameters = _parameters(tensor.parameters)
        if raw:
            if tensor.HasField("contents"):
                raise TensorError(f"input {tensor.name!r} has contents and raw_input_contents")
            parameters["binary_data_size"] = len(raw[index])
        else:
            document["data"] = _data(tensor)
        if parameters:
            document["parameters"] = parameters
        inputs.append(document)
    request_json: dict[str, Any] = {"inputs": inputs}
    if request.id:
        request_json["id"] = request.id
    if request.parameters:
        request_json["parameters"] = _parameters(request.parameters)
    if request.outputs:
        request_json["outputs"] = [{"name": output.name,
                                    "parameters": _parameters(output.parameters)}
                                   for output in request.outputs]
    return request_json, b"".join(raw)


def _shape(output: dict) -> list[int]:
    shape = output.get("shape")
    if not isinstance(shape, list) or any(type(d) is not int for d in shape):
        raise TensorError(f"Output {output.get('name')!r} has no shape (a list of integers)", 500)
    return shape


def _fill(contents: oip.InferTensorContents, output: dict) -> None:
    """Puts an output's data in the contents field of its datatype."""
    name, datatype = output.get("name"), output.get("datatype")
    if datatype not in CONTENTS or not isinstance(output.get("data"), list):
        raise TensorError(f"Output {name!r} cannot be sent as contents: it needs a datatype "
                          "FP16 aside, and data", 500)
    values = flatten(output["data"])
    if datatype == "BYTES":
        values = [value if isinstance(value, bytes) else str(value).encode() for value in values]
    try:
        getattr(contents, CONTENTS[datatype]).extend(values)
    except (TypeError, ValueError) as error:
        raise TensorError(f"Output {name!r} cannot be sent as {datatype}: {error}", 500) from None


def response_message(document: dict, request: oip.ModelInferRequest) -> oip.ModelInferResponse:
    """The model's inference response (its id the request's, its outputs those asked for)."""
    version = document.get("model_version")
    response = oip.ModelInferResponse(
        model_name=request.model_name,
        model_version=version if isinstance(version, str) else request.model_version,
        id=request.id)
    raw = bool(request.raw_input_contents)
    for output in document["outputs"]:
        tensor = response.outputs.add(name=str(output.get("name")),
                                      datatype=str(output.get("datatype")), shape=_shape(output))
        if raw:
            response.raw_output_contents.append(encode_output(output))
        else:
            _fill(tensor.contents, output)
    return response
