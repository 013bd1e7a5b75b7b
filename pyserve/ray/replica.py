"""One model served in this process by pyserve's engine: what a Ray Serve replica runs.

It needs nothing of Ray: the deployment (pyserve.ray.deployment) gives it the archive, the
model's settings and a worker count, and asks it for predictions. Requests go straight into
the C++ core (LocalClient), as the server process's own do, and meet the same batcher.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyserve.config import Settings
from pyserve.engine import Engine
from pyserve.engine.loading import RegisterOptions
from pyserve.frames import Result
from pyserve.frontend.describe import describe_model
from pyserve.frontend.http import RequestIds
from pyserve.frontend.predictions import Predictor
from pyserve.serving.streamed import Streamed


@dataclass
class ModelOptions:
    """The model's own settings, named as `pyserve start` and the register API name them;
    None leaves the archive's model-config yaml, then pyserve's default, to decide."""

    model_name: str | None = None
    batch_size: int | None = None
    max_batch_delay: int | None = None  # milliseconds
    response_timeout: int | None = None  # seconds
    workers: int | None = None  # worker processes in each replica


class ModelReplica:
    """The engine, one registered model, and predictions for it."""

    def __init__(self, settings: Settings | None = None):
        self.engine = Engine(settings or Settings(disable_token_authorization=True))
        self.predictor = Predictor(self.engine)
        self.ids = RequestIds()
        self.name = ""

    async def start(self, archive: str, options: ModelOptions, default_workers: int) -> None:
        """Starts the engine and registers `archive` (a path or an http(s) URL), returning once
        its workers have loaded; a model that does not load raises and leaves nothing running."""
        await self.engine.start()
        workers = options.workers if options.workers is not None else default_workers
        register = RegisterOptions(model_name=options.model_name, batch_size=options.batch_size,
                                   max_batch_delay=options.max_batch_delay,
                                   response_timeout=options.response_timeout,
                                   initial_workers=workers)
        try:
            model = await self.engine.register(archive, register, loaded_at_startup=True)
        except BaseException:
            await self.engine.close()
            raise
        self.name = model.name

    async def predict(self, version: str | None, url_path: str, headers: list, content_type: str,
                      body: bytes) -> Result | Streamed:
        """The handler's answer; a ServeError for what pyserve answers itself (404, 503, ...)."""
        return await self.predictor.predict(self.name, version, url_path, False, self.ids.next(),
                                            headers, content_type, body)

    def describe(self) -> dict:
        """The model as pyserve's describe API shows it: settings, workers, queue."""
        model = self.engine.model(self.name)
        return describe_model(model, self.engine.core.queued(model.core_id))

    def healthy(self) -> bool:
        return self.engine.healthy()

    async def close(self) -> None:
        await self.engine.close()
