from pyserve.handlers.util import import_class
from pyserve.worker.intermediate import send_intermediate_predict_response

__all__ = ["import_class", "send_intermediate_predict_response"]
