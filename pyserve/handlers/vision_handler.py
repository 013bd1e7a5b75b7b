"""TorchServe's VisionHandler: the image decoding every built-in vision handler shares."""

from __future__ import annotations

import base64
import io
from abc import ABC

import torch
from PIL import Image

from pyserve.handlers.base_handler import BaseHandler, captum_attr, timed


class VisionHandler(BaseHandler, ABC):
    """Turns each request's image (bytes, base64 text or a nested list) into one batch tensor."""

    def initialize(self, context):
        super().initialize(context)
        # Built lazily by get_insights: captum is optional and only explanations need it.
        self.ig = None
        if not context.system_properties.get("limit_max_image_pixels"):
            Image.MAX_IMAGE_PIXELS = None

    @timed
    def preprocess(self, data):
        images = []
        for row in data:
            image = row.get("data") or row.get("body")
            if isinstance(image, str):
                image = base64.b64decode(image)
            if isinstance(image, (bytes, bytearray)):
                image = self.image_processing(Image.open(io.BytesIO(image)))
            else:
                image = torch.FloatTensor(image)
            images.append(image)
        return torch.stack(images).to(self.device)

    def get_insights(self, tensor_data, _, target=0):
        if self.ig is None:
            self.ig = captum_attr().IntegratedGradients(self.model)
        return self.ig.attribute(tensor_data, target=target, n_steps=15).tolist()
