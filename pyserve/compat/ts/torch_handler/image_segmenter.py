from pyserve.handlers.image_segmenter import ImageSegmenter

__all__ = ["ImageSegmenter"]
