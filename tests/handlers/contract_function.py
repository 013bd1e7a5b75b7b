"""A function entry point named in --handler as `contract_function:predict` (no `handle`)."""


def predict(data, context):
    if data is None:
        return None
    return [f"predict:{context.model_name}" for _ in data]
