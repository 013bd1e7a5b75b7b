"""The Python face of _core: model registry, worker processes, scaling and restarts."""

from pyserve.engine.engine import Engine

__all__ = ["Engine"]
