"""A batched MLP handler, written for TorchServe: each request is a JSON list of 64 numbers,
the answer its 10 scores. The same archive runs on TorchServe and on pyserve."""

import torch
from ts.torch_handler.base_handler import BaseHandler


class MLPHandler(BaseHandler):
    def preprocess(self, data):
        rows = [row.get("data") or row.get("body") for row in data]
        return torch.tensor(rows, dtype=torch.float32, device=self.device)

    def postprocess(self, data):
        return data.tolist()
