"""KServe v2, the Open Inference Protocol (`service_envelope=kservev2`): tensors in and out.

Each input tensor of a request is one row for the handler: the tensor's dict, its `data`
reshaped to its `shape` (a BYTES tensor's first element only, as TorchServe does). The
handler's i-th answer becomes the output named after the i-th input, flattened, its datatype
read from what numpy makes of it. TorchServe reads only the first request of a batch; here
every request's tensors join the handler's rows and each request gets its own response.
"""

from __future__ import annotations

import numpy as np

from pyserve.handlers.util import PredictionException
from pyserve.worker.envelopes.base import BaseEnvelope, request_body, split

DATATYPES = {  # numpy dtype -> KServe v2 datatype
    "bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
    "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
    "float16": "FP16", "float32": "FP32", "float64": "FP64", "object": "BYTES",
}


def datatype(dtype: np.dtype) -> str:
    name = DATATYPES.get(str(dtype)) or ("BYTES" if dtype.kind == "U" else None)
    if name is None:
        raise PredictionException(f"The handler returned an output of dtype {dtype}, which "
                                  "has no KServe v2 datatype", 503)
    return name


def _row(tensor: dict) -> dict:
    if tensor["datatype"] == "BYTES":
        return {**tensor, "data": tensor["data"][0]}
    return {**tensor, "data": np.array(tensor["data"]).reshape(tuple(tensor["shape"])).tolist()}


def _output(answer, name: str) -> dict:
    flat = np.array(answer).flatten()
    return {"name": name, "datatype": datatype(flat.dtype), "data": flat.tolist(),
            "shape": list(flat.shape)}


class KServev2Envelope(BaseEnvelope):
    def parse_input(self, data: list) -> list:
        rows: list = []
        self._requests = []  # (id, input names) of each request
        for row in data:
            body = request_body(row)
            try:
                tensors = [_row(tensor) for tensor in body["inputs"]]
                names = [tensor["name"] for tensor in tensors]
            except (KeyError, TypeError, ValueError, IndexError) as error:
                raise PredictionException(f"Not a KServe v2 inference request: "
                                          f"{type(error).__name__}: {error}", 400) from None
            rows.extend(tensors)
            self._requests.append((body.get("id"), names))
        return rows

    def format_output(self, data: list) -> list:
        model = (self.context.manifest or {}).get("model", {})
        counts = [len(names) for _, names in self._requests]
        responses = []
        for idx, answers in enumerate(split(data, counts, "input tensors")):
            request_id, names = self._requests[idx]
            if len(answers) > len(names):
                raise PredictionException(f"The handler returned {len(answers)} outputs for "
                                          f"{len(names)} input tensors", 503)
            responses.append({
                "id": request_id if isinstance(request_id, str) and request_id.strip()
                else self.context.get_request_id(idx),
                "model_name": model.get("modelName"),
                "model_version": model.get("modelVersion"),
                "outputs": [_output(answer, name) for answer, name in zip(answers, names)],
            })
        return responses
