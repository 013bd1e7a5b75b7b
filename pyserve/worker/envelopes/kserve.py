"""KServe v1 (`service_envelope=kserve`): `{"instances": [...]}` in, `{"predictions": [...]}` out.

Each instance is one row for the handler. TorchServe reads only the first request of a batch
(a batch of two fails with 503); here every request's instances join the handler's rows and
each request gets its own answer back. An explanation request (`:explain`, request header
`explain: True`) is answered `{"explanations": [...]}`.
"""

from __future__ import annotations

from pyserve.handlers.util import PredictionException
from pyserve.worker.envelopes.base import BaseEnvelope, request_body, split


class KServeEnvelope(BaseEnvelope):
    def parse_input(self, data: list) -> list:
        rows: list = []
        self._counts = []
        for row in data:
            instances = request_body(row).get("instances")
            if not isinstance(instances, list):
                raise PredictionException('A KServe v1 request needs an "instances" list', 400)
            rows.extend(instances)
            self._counts.append(len(instances))
        return rows

    def format_output(self, data: list) -> list:
        return [{"explanations" if self._explain(idx) else "predictions": answers}
                for idx, answers in enumerate(split(data, self._counts, "instances"))]

    def _explain(self, idx: int) -> bool:
        return self.context.get_request_header(idx, "explain") == "True"
