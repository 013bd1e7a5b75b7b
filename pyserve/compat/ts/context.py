from pyserve.worker.context import Context, RequestProcessor

__all__ = ["Context", "RequestProcessor"]
