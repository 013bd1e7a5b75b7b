"""TorchServe's `send_intermediate_predict_response`: a handler streams parts of its answers
before it returns; its return value is then the last part.

`ret[idx]` is a part of the answer to request `idx` of `req_id_map` (the batch's
`context.request_ids`, or some of them), encoded as a handler's return values are. The part
leaves the worker at once and reaches the client as an HTTP chunk (or a gRPC stream
message). TorchServe also takes `message` and `code` for its own socket frame; a part's
status is the request's, as in TorchServe (`context.set_response_status`).
"""

from __future__ import annotations

import os
from typing import Any


def send_intermediate_predict_response(ret: list | None, req_id_map: dict, message: str,
                                       code: int, context: Any) -> None:
    if str(os.getenv("LOCAL_RANK", 0)) != "0":  # TorchServe: only rank 0 answers
        return None
    if context is None or getattr(context, "part_sender", None) is None:
        raise RuntimeError("send_intermediate_predict_response is called from handle(), with "
                           "the context of the batch being handled")
    context.part_sender(ret, req_id_map)
    return None
