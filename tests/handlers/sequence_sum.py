"""A stateful model without torch: each sequence's running sum of the numbers sent to it
(`data`, as TorchServe's stateful example reads them), kept per sequence id."""

sums = {}


def handle(data, context):
    if data is None:
        return None
    answers = []
    for idx, row in enumerate(data):
        sequence_id = context.get_sequence_id(idx)
        sums[sequence_id] = sums.get(sequence_id, 0) + int(row.get("data") or row.get("body"))
        answers.append(sums[sequence_id])
    return answers
