"""Written for TorchServe's kserve envelope (service_envelope=kserve): each row is one instance,
a list of numbers. Answers each with its sum and how many rows this call of handle held, so a
test sees which instances were batched together. An instance {"sleep": s} keeps the worker
busy for s seconds first."""

import time


def handle(data, context):
    if data is None:
        return None
    answers = []
    for instance in data:
        if isinstance(instance, dict):
            time.sleep(instance["sleep"])
            answers.append("slept")
        else:
            answers.append({"sum": sum(instance), "rows": len(data)})
    return answers
