"""A handler written for TorchServe: it subclasses ts's BaseHandler and uses ts's Context."""

import torch
from ts.context import Context
from ts.torch_handler.base_handler import BaseHandler
from ts.utils.util import PredictionException


class MLPHandler(BaseHandler):
    def initialize(self, context: Context):
        super().initialize(context)
        self.initialized = True

    def preprocess(self, data):
        rows = [row.get("data") or row.get("body") for row in data]
        if not all(isinstance(row, list) for row in rows):
            raise PredictionException("expected a JSON list of numbers", 400)
        return torch.tensor(rows, dtype=torch.float32, device=self.device)

    def postprocess(self, data):
        return data.tolist()
