"""The frames the server sent this worker, with withdrawn requests left out of their batches.

The server sends a worker its next batch while the worker still runs the one before, so that
no round trip separates two batches. A request whose client hangs up meanwhile is already in
the ring: the server writes [WITHDRAW, id] behind it. When the worker starts a batch it reads
what else is already in its ring, and leaves out of that batch, and of any batch read ahead,
every request withdrawn so far. A withdrawal always arrives after its batch, so one for a
request in none of them is for a request already run: it is dropped (the server drops that
answer).
"""

from __future__ import annotations

from collections import deque

from pyserve import _core, frames


class Inbox:
    def __init__(self, channel: _core.WorkerChannel):
        self.channel = channel
        # Frames read while looking for withdrawals; a frame that failed its check is kept
        # as its error, raised in its turn, so that the batches before it still run.
        self._ahead: deque[list | frames.FrameError] = deque()

    def next(self, receive) -> list:
        """The next frame that is not a withdrawal; `receive()` reads one from the ring."""
        while True:
            frame = self._ahead.popleft() if self._ahead else receive()
            if isinstance(frame, frames.FrameError):
                raise frame
            if frame[0] != frames.WITHDRAW:
                return frame

    def without_withdrawn(self, requests: list[dict]) -> list[dict]:
        """`requests` (the batch about to run) less those withdrawn by now."""
        withdrawn = set()
        while not self._broken() and (frame := self.channel.receive(timeout=0)) is not None:
            try:
                frame = frames.decode_request_frame(frame)
            except frames.FrameError as error:
                self._ahead.append(error)
                break
            if frame[0] == frames.WITHDRAW:
                withdrawn.add(frame[1])
            else:
                self._ahead.append(frame)
        if not withdrawn:
            return requests
        for frame in self._ahead:
            if isinstance(frame, list) and frame[0] == frames.BATCH:
                frame[2] = [request for request in frame[2] if request["id"] not in withdrawn]
        return [request for request in requests if request["id"] not in withdrawn]

    def _broken(self) -> bool:
        return bool(self._ahead) and isinstance(self._ahead[-1], frames.FrameError)
