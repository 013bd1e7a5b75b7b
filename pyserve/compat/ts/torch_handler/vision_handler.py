from pyserve.handlers.vision_handler import VisionHandler

__all__ = ["VisionHandler"]
