"""Streams its answer, as TorchServe's test_send_intermediate_prediction_response handler
does: three parts, then the return value as the last. b"slow" waits a second after each
part, so that a test can see the parts arrive while the handler still runs."""

import time

from ts.handler_utils.utils import send_intermediate_predict_response
from ts.protocol.otf_message_handler import create_predict_response  # noqa: F401 - importable


def handle(data, context):
    if type(data) is list:
        slow = bytes(data[0].get("body") or b"") == b"slow"
        for _ in range(3):
            send_intermediate_predict_response(["hello"] * len(data), context.request_ids,
                                               "Intermediate Prediction success", 200, context)
            if slow:
                time.sleep(1)
        return ["hello world "] * len(data)
