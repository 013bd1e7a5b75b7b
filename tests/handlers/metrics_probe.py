"""Records custom metrics through context.metrics, as TorchServe handlers do."""

from ts.metrics.dimension import Dimension


def handle(data, context):
    if data is None:
        return None
    context.metrics.add_counter("ProbeRequests", len(data), None, [Dimension("Kind", "probe")])
    context.metrics.add_time("ProbeLatency", 1.5, None, "ms")
    return ["ok" for _ in data]
