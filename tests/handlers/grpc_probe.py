"""Does what a gRPC request's inputs ask, one request at a time: `fail` raises, `status` sets
the answer's status, `sleep` waits that many seconds, `parts` streams that many parts
(send_intermediate_predict_response, `gap` seconds apart) before the last; otherwise it
answers each input's name with its type and value, as the handler received them."""

import json
import time

from ts.handler_utils.utils import send_intermediate_predict_response


def handle(data, context):
    if data is None:
        return None
    row = data[0]
    if "fail" in row:
        raise RuntimeError("asked to fail")
    if "sleep" in row:
        time.sleep(float(row["sleep"]))
    if "status" in row:
        context.set_response_status(int(row["status"]), "", 0)
    if "parts" in row:
        for part in range(int(row["parts"])):
            send_intermediate_predict_response([f"part{part} "], context.request_ids,
                                               "Intermediate Prediction success", 200, context)
            time.sleep(float(row.get("gap", 0)))
        return ["last"]
    return [json.dumps({name: [type(value).__name__, bytes(value).decode()]
                        for name, value in row.items()})]
