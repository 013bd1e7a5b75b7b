"""TorchServe's ImageSegmenter: per pixel, the most likely class and its probability."""

from __future__ import annotations

import torch

from pyserve.handlers.transforms import imagenet_transform
from pyserve.handlers.vision_handler import VisionHandler


class ImageSegmenter(VisionHandler):
    """Takes a model answering {"out": [N, K, H, W]}; answers each image with H x W [class, prob]."""

    image_processing = imagenet_transform()

    def postprocess(self, data):
        # Only the top class per pixel: all K scores would make responses tens of MB.
        probabilities = torch.softmax(data["out"], dim=1)
        best = torch.max(probabilities, dim=1)
        return torch.stack([best.indices.to(best.values.dtype), best.values], dim=3).tolist()
