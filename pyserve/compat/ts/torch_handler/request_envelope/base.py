from pyserve.worker.envelopes.base import BaseEnvelope

__all__ = ["BaseEnvelope"]
