"""Written for TorchServe's kservev2 envelope (service_envelope=kservev2): each row is one
input tensor, its data reshaped to its shape. Answers each tensor doubled in its own datatype
(a BYTES tensor, which arrives as its first element: upper-cased; BOOL: negated). An input
named "rows" is answered with how many rows this call of handle held, so a test sees which
requests were batched together; one named "sleep" keeps the worker busy that many seconds."""

import time

import numpy as np

NUMPY_TYPES = {"UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
               "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
               "FP16": "float16", "FP32": "float32", "FP64": "float64"}


class TensorDoubler:
    def initialize(self, context):
        self.initialized = True

    def handle(self, data, context):
        answers = []
        for tensor in data:
            if tensor["name"] == "sleep":
                time.sleep(tensor["data"][0])
            if tensor["name"] == "rows":
                answers.append(np.array([len(data)], dtype="int32"))
            elif tensor["datatype"] == "BYTES":
                answers.append(tensor["data"].upper())
            elif tensor["datatype"] == "BOOL":
                answers.append(np.logical_not(tensor["data"]))
            else:
                answers.append(np.asarray(tensor["data"], NUMPY_TYPES[tensor["datatype"]]) * 2)
        return answers
