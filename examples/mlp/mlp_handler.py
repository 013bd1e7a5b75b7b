"""A batched MLP handler, written for TorchServe: each request is a JSON list of 64 numbers,
the answer its 10 scores. The same archive runs on TorchServe and on pyserve. The list comes
parsed from a REST body sent as application/json, as bytes from a gRPC input, and as the
tensor's data under the kservev2 envelope."""

import json

import torch
from ts.torch_handler.base_handler import BaseHandler


class MLPHandler(BaseHandler):
    def preprocess(self, data):
        rows = [row.get("data") or row.get("body") for row in data]
        rows = [json.loads(row) if isinstance(row, (bytes, bytearray)) else row for row in rows]
        return torch.tensor(rows, dtype=torch.float32, device=self.device)

    def postprocess(self, data):
        return data.tolist()
