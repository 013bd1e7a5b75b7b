"""TorchServe's ObjectDetector: boxes whose score reaches `threshold`, labelled by index_to_name."""

from __future__ import annotations

from pyserve.handlers.transforms import Compose, ToTensor
from pyserve.handlers.util import map_class_to_label
from pyserve.handlers.vision_handler import VisionHandler


class ObjectDetector(VisionHandler):
    """Takes torchvision detection output ([{boxes, labels, scores}] per image).

    Answers each image with [{label: [x1, y1, x2, y2], "score": s}, ...].
    """

    image_processing = Compose([ToTensor()])
    threshold = 0.5

    def postprocess(self, data):
        result = []
        for detections in data:
            keep = detections["scores"] >= self.threshold
            boxes = detections["boxes"][keep].tolist()
            labels = detections["labels"][keep].tolist()
            scores = detections["scores"][keep].tolist()
            found = []
            for label, box, score in zip(labels, boxes, scores):
                entry = map_class_to_label([[box]], self.mapping, [[label]])[0]
                entry["score"] = score
                found.append(entry)
            result.append(found)
        return result
