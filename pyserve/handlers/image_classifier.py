"""TorchServe's ImageClassifier: ImageNet-style input, top-k labels with probabilities out."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pyserve.handlers.base_handler import timed
from pyserve.handlers.transforms import imagenet_transform
from pyserve.handlers.util import map_class_to_label
from pyserve.handlers.vision_handler import VisionHandler


class ImageClassifier(VisionHandler):
    """Answers each image with {label: probability} for its `topk` most likely classes."""

    topk = 5
    image_processing = imagenet_transform()

    def set_max_result_classes(self, topk):
        self.topk = topk

    def get_max_result_classes(self):
        return self.topk

    @timed
    def postprocess(self, data):
        probabilities = F.softmax(data, dim=1)
        # TorchServe asks for topk=5 even of a model with fewer classes, and fails; cap it.
        probs, classes = torch.topk(probabilities, min(self.topk, probabilities.shape[1]), dim=1)
        return map_class_to_label(probs.tolist(), self.mapping, classes.tolist())
