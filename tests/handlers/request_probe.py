"""Reports the request headers the frontend adds (url_path, explain) and the request id."""

import json


def handle(data, context):
    if data is None:
        return None
    return [
        json.dumps({
            "url_path": context.get_request_header(idx, "url_path"),
            "explain": context.get_request_header(idx, "explain"),
            "request_id": context.get_request_id(idx),
        })
        for idx in range(len(data))
    ]
