"""Echo: answers each request with its own body. Measures pure server overhead."""


def handle(data, context):
    if data is None:  # called once at load: nothing to initialise
        return None
    return [row.get("data", row.get("body")) for row in data]
