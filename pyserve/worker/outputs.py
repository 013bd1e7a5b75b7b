"""Turns a handler's return values into response bodies, as TorchServe encodes them.

bytes go out as they are, str as UTF-8, a torch.Tensor as the bytes of ``torch.save``,
anything else as ``json.dumps(item, indent=2)``: written in C++ for plain values (Python's
encoder is pure Python once indented, and costs more than the rest of a request's work).
"""

from __future__ import annotations

import io
import json
import sys
from typing import Any

from pyserve.worker._json import dumps_indent2


def encode_body(item: Any) -> bytes:
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    if isinstance(item, str):
        return item.encode("utf-8")
    torch = sys.modules.get("torch")  # a tensor can only exist if its handler imported torch
    if torch is not None and isinstance(item, torch.Tensor):
        buffer = io.BytesIO()
        torch.save(item, buffer)
        return buffer.getvalue()
    encoded = dumps_indent2(item)
    return encoded if encoded is not None else json.dumps(item, indent=2).encode("utf-8")
