from pyserve.worker.metrics import MetricTypes

__all__ = ["MetricTypes"]
