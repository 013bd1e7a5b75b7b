from pyserve.worker.metrics import Dimension

__all__ = ["Dimension"]
