"""The metrics API: Prometheus text at /metrics, filtered by TorchServe's `name[]` parameter."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pyserve.frontend.http import listener_app
from pyserve.frontend.openapi import metrics_api
from pyserve.metrics import CONTENT_TYPE, ServerMetrics


def metrics_app(metrics: ServerMetrics, version: str):
    async def scrape(request: Request) -> Response:
        names = request.query_params.getlist("name[]")
        return Response(metrics.render(names), media_type=CONTENT_TYPE)

    return listener_app([Route("/metrics", scrape, methods=["GET"])], lambda: metrics_api(version),
                        metrics=None)
