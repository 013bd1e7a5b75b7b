"""The metrics API: Prometheus text at /metrics, filtered by TorchServe's `name[]` parameter."""

from __future__ import annotations

from typing import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pyserve.frontend.http import listener_app
from pyserve.frontend.openapi import metrics_api
from pyserve.metrics import CONTENT_TYPE, ServerMetrics


def metrics_app(metrics: ServerMetrics, version: str,
                others: Callable[[], Awaitable[list[dict]]] | None = None):
    """`others`: the request counters of the frontend processes, added to this process's."""

    async def scrape(request: Request) -> Response:
        names = request.query_params.getlist("name[]")
        counters = await others() if others else ()
        return Response(metrics.render(names, counters), media_type=CONTENT_TYPE)

    return listener_app([Route("/metrics", scrape, methods=["GET"])], lambda: metrics_api(version),
                        metrics=None)
