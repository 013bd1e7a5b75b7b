"""Answers every other batch and raises on the rest, so a run has both successes and failures."""

batches = 0


def handle(data, context):
    global batches
    if data is None:
        return None
    batches += 1
    if batches % 2 == 0:
        raise RuntimeError("every other batch fails")
    return [b"ok" for _ in data]
