"""TorchServe's continuous batching (model-config `continuousBatching: true`), in the worker.

A handler answers a request in parts: its stopping criterion (`context.stopping_criteria`)
says after each call whether the request has more to send. Such a request stays with the
worker and runs again in the next call, together with the requests that arrived meanwhile
(the server sends a second batch while the first still streams), until every request has
sent its last part. Each call's answers go back at once: a part with `more`, then the last.
"""

from __future__ import annotations

import time

from pyserve import _core, frames
from pyserve.worker.service import Service


class ContinuousBatch:
    def __init__(self, channel: _core.WorkerChannel, service: Service, send_results):
        self.channel = channel
        self.service = service
        self.send_results = send_results  # (batch id, results, started_ns, done=)
        self.active: list[tuple[int, dict]] = []  # (batch id, request), in arrival order
        self.started: dict[int, int] = {}  # batch id -> when it began here (monotonic ns)
        self.stop_seen = False

    def run(self, batch_id: int, requests: list[dict], started_ns: int) -> bool:
        """Serves the batch and every one that arrives until nothing streams; True if the server
        asked the worker to stop meanwhile (it stops once the streams are done)."""
        self.active.extend((batch_id, request) for request in requests)
        self.started[batch_id] = started_ns
        while self.active:
            results = self.service.predict([request for _, request in self.active],
                                           self._send_parts)
            by_batch: dict[int, list] = {}
            still: list[tuple[int, dict]] = []
            for (owner, request), result in zip(self.active, results):
                by_batch.setdefault(owner, []).append(result)
                if len(result) > 6 and result[6]:
                    still.append((owner, request))
            streaming = {owner for owner, _ in still}
            for owner, answers in by_batch.items():
                done = owner not in streaming
                started = self.started.pop(owner) if done else self.started[owner]
                self.send_results(owner, answers, started, done=done)
            self.active = still
            self._take_arrivals()
        return self.stop_seen

    def _send_parts(self, parts: list) -> None:
        """Parts the handler sent with send_intermediate_predict_response, each to its batch."""
        owners = {request["id"]: owner for owner, request in self.active}
        by_batch: dict[int, list] = {}
        for part in parts:
            by_batch.setdefault(owners[part[0]], []).append(part)
        for owner, batch_parts in by_batch.items():
            self.send_results(owner, batch_parts, self.started[owner], done=False)

    def _take_arrivals(self) -> None:
        """The batches the server sent meanwhile join the next call; nothing is waited for."""
        while not self.stop_seen:
            frame = self.channel.receive(timeout=0)
            if frame is None:
                return
            frame = frames.decode_request_frame(frame)
            if frame[0] == frames.STOP:
                self.stop_seen = True
            elif frame[0] == frames.BATCH:
                _, batch_id, requests = frame
                self.active.extend((batch_id, request) for request in requests)
                self.started[batch_id] = time.monotonic_ns()
