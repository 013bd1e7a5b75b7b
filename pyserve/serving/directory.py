"""What the inference API needs to know of the models: the seam between it and the engine.

In the server process the engine itself is the directory. A frontend process holds a
`Replica`: the snapshot the server last sent it (pyserve.supervisor), and its own channel
to the core. Either way a prediction is one `model()` lookup and one `infer()` call.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from pyserve.errors import ModelNotFound, ModelVersionNotFound, ServiceUnavailable
from pyserve.frames import Result
from pyserve.metrics import ServerMetrics
from pyserve.serving.client import Client
from pyserve.serving.streamed import Streamed


class ModelView(Protocol):
    name: str
    version: str
    core_id: int
    stateful: bool  # its requests belong to sequences (pyserve.serving.sequences)

    def can_serve(self) -> bool: ...


class Directory(Protocol):
    metrics: ServerMetrics

    def model(self, name: str, version: str | None = None) -> ModelView: ...

    def healthy(self) -> bool: ...

    def infer(self, model: ModelView, request_id: str, content_type: str, headers: list,
              body: bytes, sequence: int = 0) -> tuple[int, asyncio.Future[Result | Streamed]]:
        """Submits a request: (its id, the future of its answer)."""

    def withdraw(self, model: ModelView, id: int) -> None:
        """Nobody waits for request `id` any more: it does not run if it can still be stopped."""


def find_version(models: dict, defaults: dict[str, str], name: str, version: str | None):
    """models[name][version], or the default version, with TorchServe's 404s."""
    versions = models.get(name)
    if not versions:
        raise ModelNotFound(f"Model not found: {name}")
    if version is None:
        return versions[defaults[name]]
    if version not in versions:
        raise ModelVersionNotFound(f"Model version: {version} does not exist for model: {name}")
    return versions[version]


def no_worker(name: str) -> ServiceUnavailable:
    return ServiceUnavailable(f'Model "{name}" has no worker to serve inference request. '
                              "Please use scale workers API to add workers.")


@dataclass(frozen=True)
class ModelEntry:
    """A model version as a snapshot describes it."""

    name: str
    version: str
    core_id: int
    serving: bool  # a worker is alive or coming back
    stateful: bool = False

    def can_serve(self) -> bool:
        return self.serving


def snapshot_models(engine) -> list[list]:
    """The engine's models as a snapshot carries them:
    [name, version, core id, default, serving, stateful]."""
    return [[model.name, model.version, model.core_id, engine.is_default(model), model.can_serve(),
             model.stateful]
            for versions in engine.models.values() for model in versions.values()]


class Replica:
    """A frontend process's view of the models, as the server last described them."""

    def __init__(self, client: Client, metrics: ServerMetrics):
        self.client = client
        self.metrics = metrics
        self._models: dict[str, dict[str, ModelEntry]] = {}
        self._defaults: dict[str, str] = {}
        self._healthy = True

    def update(self, models: list[list], healthy: bool) -> None:
        by_name: dict[str, dict[str, ModelEntry]] = {}
        defaults: dict[str, str] = {}
        for name, version, core_id, default, serving, stateful in models:
            by_name.setdefault(name, {})[version] = ModelEntry(name, version, core_id, serving,
                                                               stateful)
            if default:
                defaults[name] = version
        self._models, self._defaults, self._healthy = by_name, defaults, healthy

    def model(self, name: str, version: str | None = None) -> ModelEntry:
        return find_version(self._models, self._defaults, name, version)

    def healthy(self) -> bool:
        return self._healthy

    def infer(self, model: ModelView, request_id: str, content_type: str, headers: list,
              body: bytes, sequence: int = 0) -> tuple[int, asyncio.Future[Result | Streamed]]:
        if not model.can_serve():
            raise no_worker(model.name)
        return self.client.submit(model.core_id, request_id, content_type, headers, body,
                                  sequence=sequence)

    def withdraw(self, model: ModelView, id: int) -> None:
        self.client.withdraw(model.core_id, id)
