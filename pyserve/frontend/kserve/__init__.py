"""KServe's protocols on the inference listener: v1 and v2 (the Open Inference Protocol) over
REST, as TorchServe serves them behind KServe.

Each protocol is a module of routes (v1.py, v2.py); what they answer is written once
(responses.py), the v2 tensors' wire format once (tensors.py). Every inference goes through
the same Predictor as `/predictions`, so requests of every protocol share a model's batches.
"""

from __future__ import annotations

from starlette.routing import Route

from pyserve.config import Settings
from pyserve.frontend.kserve.v1 import v1_routes
from pyserve.frontend.kserve.v2 import v2_routes
from pyserve.frontend.predictions import Predictor
from pyserve.serving.directory import Directory


def kserve_routes(predictor: Predictor, directory: Directory, settings: Settings,
                  version: str) -> list[Route]:
    return [*v1_routes(predictor, directory, settings.max_request_size),
            *v2_routes(predictor, directory, settings.max_request_size, version)]
