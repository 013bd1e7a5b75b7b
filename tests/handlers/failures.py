"""Fails the way the X-Fail header asks, so each of TorchServe's error answers can be seen."""

import os

from ts.utils.util import PredictionException


class Unserializable:
    pass


def handle(data, context):
    if data is None:
        return None
    how = context.get_request_header(0, "X-Fail")
    if how == "raise":
        raise RuntimeError("the handler broke")
    if how == "prediction-exception":
        raise PredictionException("teapot refuses", int(context.get_request_header(0, "X-Code")))
    if how == "memory":
        raise MemoryError()
    if how == "cuda":
        raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")
    if how == "not-a-list":
        return "just a string"
    if how == "wrong-length":
        return data + data
    if how == "unserializable":
        return [Unserializable() for _ in data]
    if how == "tensor":
        import torch

        return [torch.arange(4) for _ in data]
    if how == "dict":
        return [{"answer": 42, "pid": os.getpid()} for _ in data]
    return [str(os.getpid()) for _ in data]
