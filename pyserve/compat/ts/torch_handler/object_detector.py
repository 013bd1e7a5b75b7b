from pyserve.handlers.object_detector import ObjectDetector

__all__ = ["ObjectDetector"]
