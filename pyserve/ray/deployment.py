"""The Ray Serve deployment: each replica is one pyserve engine serving one model.

A replica answers Ray Serve's HTTP proxy as pyserve's inference API answers
`/predictions/{model}` (the handler's status, headers and body, pyserve's errors), and
DeploymentHandle calls: `await handle.predict.remote(body, content_type)` returns the
answer's bytes, or raises PredictionFailed with the status pyserve would have answered.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray
from ray import serve
from ray.serve import Application
from starlette.requests import Request
from starlette.responses import Response

from pyserve.engine.fetch import is_url
from pyserve.errors import ServeError
from pyserve.frontend.http import serve_error_response
from pyserve.frontend.predictions import handler_response
from pyserve.ray.replica import ModelOptions, ModelReplica
from pyserve.serving.streamed import Streamed

NODE_HEADER = "x-ray-node-id"  # which Ray node answered: every HTTP answer carries it
# Ray Serve's default (5 requests in flight per replica) would keep batches from filling:
# requests wait in pyserve's own queue instead, up to its job_queue_size (100).
DEFAULT_MAX_ONGOING_REQUESTS = 100


class PredictionFailed(Exception):
    """A prediction answered with an error: the handler's own status, or pyserve's
    (404 for a version it does not serve, 503 when no worker can take it, ...)."""

    def __init__(self, status: int, body: bytes):
        super().__init__(status, body)
        self.status = status
        self.body = body

    def __str__(self) -> str:
        return f"prediction failed with status {self.status}: {self.body[:500]!r}"


def assigned_cpus() -> int:
    """The CPUs Ray gave this replica (ray_actor_options num_cpus), at least one."""
    return max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 0)))


def _version_and_path(scope: dict) -> tuple[str | None, str]:
    """What follows the route prefix: nothing (the default version), a version, or a version
    and extra segments, which reach the handler as `url_path`, as in pyserve's API."""
    rest = scope["path"].removeprefix(scope.get("root_path", ""))
    segments = rest.strip("/").split("/", 1)
    return segments[0] or None, segments[1] if len(segments) > 1 else ""


class PyserveModel:
    """One replica: pyserve's engine, its worker processes, one model.

    Every method is async: Ray Serve runs those on the replica's event loop, where the engine
    lives (sync ones would run in a thread pool)."""

    async def __init__(self, archive: str, options: ModelOptions):
        self.node_id = ray.get_runtime_context().get_node_id()
        self.replica = ModelReplica()
        await self.replica.start(archive, options, assigned_cpus())

    async def __call__(self, request: Request) -> Response:
        node = [(NODE_HEADER.encode(), self.node_id.encode())]
        try:
            version, url_path = _version_and_path(request.scope)
            answer = await self.replica.predict(version, url_path, request.scope["headers"],
                                                request.headers.get("content-type", ""),
                                                await request.body())
            response = handler_response(answer)
        except ServeError as error:
            response = serve_error_response(error)
        response.raw_headers = [*response.raw_headers, *node]
        return response

    async def predict(self, body: bytes, content_type: str = "application/octet-stream",
                      headers: dict[str, str] | None = None, version: str | None = None) -> bytes:
        """The handler's answer to one request, for DeploymentHandle callers: its body (a
        streamed answer whole), or PredictionFailed for a status of 400 or more."""
        fields = [(name.lower().encode("latin-1"), value.encode("latin-1"))
                  for name, value in (headers or {}).items()]
        fields.append((b"content-type", content_type.encode("latin-1")))
        try:
            answer = await self.replica.predict(version, "", fields, content_type, body)
        except ServeError as error:
            raise PredictionFailed(error.code, error.body()) from None
        if isinstance(answer, Streamed):
            answer = await answer.whole()
        if answer.status >= 400:
            raise PredictionFailed(answer.status, answer.body)
        return answer.body

    async def describe(self) -> dict:
        """This replica's model as pyserve's describe API shows it, with the node it runs on."""
        return {**self.replica.describe(), "rayNodeId": self.node_id}

    async def check_health(self) -> None:
        """Ray Serve replaces a replica whose model has no worker alive or starting."""
        if not self.replica.healthy():
            raise RuntimeError(f"model {self.replica.name} has no live worker")

    async def __del__(self) -> None:
        replica = getattr(self, "replica", None)
        if replica is not None:
            await replica.close()


def pyserve_app(archive: str, *, num_replicas: int | None = None,
                autoscaling_config: dict[str, Any] | None = None, num_cpus: float = 1,
                max_ongoing_requests: int = DEFAULT_MAX_ONGOING_REQUESTS,
                max_replicas_per_node: int | None = None,
                ray_actor_options: dict[str, Any] | None = None,
                **model: Any) -> Application:
    """A Ray Serve application serving `archive` (a .mar path that every node can read, or an
    http(s) URL), ready for `serve.run(app, name=..., route_prefix=...)`.

    num_replicas and autoscaling_config (Ray Serve's: min_replicas, max_replicas,
    target_ongoing_requests, ...) go to the deployment as they are; `model` takes
    ModelOptions' fields (model_name, batch_size, max_batch_delay, response_timeout, workers).
    Each replica runs `workers` worker processes, by default one per CPU Ray gives it
    (num_cpus)."""
    options = ModelOptions(**model)
    if not is_url(archive):
        archive = str(Path(archive).resolve())
    deployment_options: dict[str, Any] = {
        "max_ongoing_requests": max_ongoing_requests,
        "ray_actor_options": {"num_cpus": num_cpus, **(ray_actor_options or {})},
    }
    if num_replicas is not None:
        deployment_options["num_replicas"] = num_replicas
    if autoscaling_config is not None:
        deployment_options["autoscaling_config"] = autoscaling_config
    if max_replicas_per_node is not None:
        deployment_options["max_replicas_per_node"] = max_replicas_per_node
    deployment = serve.deployment(PyserveModel, name="pyserve").options(**deployment_options)
    return deployment.bind(archive, options)

