"""TorchServe's frame encoding for a worker's answers (its ts/protocol/otf_message_handler),
for handlers that import it: `create_predict_response` builds the bytes TorchServe's worker
writes to its socket. pyserve's workers send answers in their own frames; a handler streams
parts with ts.handler_utils.utils.send_intermediate_predict_response."""

from __future__ import annotations

import io
import json
import logging
import struct
import sys


def encode_response_headers(headers: dict) -> bytearray:
    message = bytearray(struct.pack("!i", len(headers)))
    for key, value in headers.items():
        for text in (key, value):
            encoded = str(text).encode("utf-8")
            message += struct.pack("!i", len(encoded)) + encoded
    return message


def _encode_value(value) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        buffer = io.BytesIO()
        torch.save(value, buffer)
        return buffer.getvalue()
    return json.dumps(value, indent=2).encode("utf-8")


def create_predict_response(ret, req_id_map, message, code, context=None, ts_stream_next=False):
    """TorchServe's response frame: status, message, then per request its id, content type,
    status, phrase, headers and body; `ts_stream_next` marks a part, as TorchServe does."""
    frame = bytearray(struct.pack("!i", code))
    encoded = message.encode("utf-8")
    frame += struct.pack("!i", len(encoded)) + encoded
    for idx in req_id_map:
        request_id = req_id_map.get(idx).encode("utf-8")
        frame += struct.pack("!i", len(request_id)) + request_id
        if context is None:
            frame += struct.pack("!i", 0) + struct.pack("!i", code) + struct.pack("!i", 0)
            frame += struct.pack("!i", 0)
        else:
            if ts_stream_next is True:
                context.set_response_header(idx, "ts_stream_next", "true")
            elif context.stopping_criteria:
                stop = context.stopping_criteria[idx](ret[idx])
                if stop is not None:
                    context.set_response_header(idx, "ts_stream_next", "false" if stop else "true")
            elif context.get_response_headers(idx).get("ts_stream_next") == "true":
                context.set_response_header(idx, "ts_stream_next", "false")
            content_type = (context.get_response_content_type(idx) or "").encode("utf-8")
            frame += struct.pack("!i", len(content_type)) + content_type
            status, phrase = context.get_response_status(idx)
            phrase = (phrase or "").encode("utf-8")
            frame += struct.pack("!i", status if status is not None else 200)
            frame += struct.pack("!i", len(phrase)) + phrase
            frame += encode_response_headers(context.get_response_headers(idx))
        if ret is None:
            body = b"error"
        else:
            try:
                body = _encode_value(ret[idx])
            except TypeError:
                logging.warning("Unable to serialize model output.", exc_info=True)
                return create_predict_response(None, req_id_map,
                                               "Unsupported model output data type.", 503)
        frame += struct.pack("!i", len(body)) + body
    frame += struct.pack("!i", -1)
    return frame
