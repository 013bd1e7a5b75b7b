from pyserve.worker.envelopes.kservev2 import KServev2Envelope

__all__ = ["KServev2Envelope"]
