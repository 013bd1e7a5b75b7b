from pyserve.worker.envelopes.kserve import KServeEnvelope

__all__ = ["KServeEnvelope"]
