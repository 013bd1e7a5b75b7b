"""Sets each response's status, content type and headers from what the request asks for."""

import json


def handle(data, context):
    if data is None:
        return None
    answers = []
    for idx, row in enumerate(data):
        asked = row["body"]
        context.set_response_status(asked["status"], asked.get("phrase", ""), idx)
        if "content_type" in asked:
            context.set_response_content_type(idx, asked["content_type"])
        for name, value in asked.get("headers", {}).items():
            context.set_response_header(idx, name, value)
        answers.append(json.dumps({"idx": idx}))
    return answers
