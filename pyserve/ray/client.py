"""Predictions through a DeploymentHandle, tried again on another replica when one dies.

Ray Serve does not resend a request whose replica died while holding it: the caller gets
RayActorError. `predict` sends it again, up to `attempts` times, and bounds each attempt
by `timeout`, so that no call waits forever. A request is idempotent for most models; one
whose handler must not run twice should be called without retries (attempts=1).
"""

from __future__ import annotations

import asyncio

from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle

DEFAULT_ATTEMPTS = 3
DEFAULT_TIMEOUT_SECONDS = 60.0


async def predict(handle: DeploymentHandle, body: bytes,
                  content_type: str = "application/octet-stream", *,
                  attempts: int = DEFAULT_ATTEMPTS, timeout: float = DEFAULT_TIMEOUT_SECONDS,
                  **options) -> bytes:
    """`handle.predict.remote(body, content_type, **options)`, again after a replica died.
    Raises PredictionFailed for an error answer, TimeoutError for an attempt that took
    longer than `timeout`, RayActorError once `attempts` replicas died holding it."""
    for attempt in range(1, attempts + 1):
        try:
            return await asyncio.wait_for(handle.predict.remote(body, content_type, **options),
                                          timeout)
        except RayActorError:
            if attempt == attempts:
                raise
    raise ValueError("attempts must be at least 1")
