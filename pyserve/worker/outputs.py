"""Turns a handler's return values into response bodies, as TorchServe encodes them.

bytes go out as they are, str as UTF-8, a torch.Tensor as the bytes of ``torch.save``,
anything else as ``json.dumps(item, indent=2)``.
"""

from __future__ import annotations

import io
import json
import sys
from typing import Any


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
    return json.dumps(item, indent=2).encode("utf-8")
