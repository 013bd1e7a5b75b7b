"""Hearing that an HTTP client hung up while its request waits for a worker.

ASGI tells an app that its client left only if the app awaits `receive()`; a task per request
to await it would cost more than the rest of a prediction's HTTP side. pyserve's connection
(BoundedHttpTools) knows at once, so it puts a `Hangup` in each request's scope and calls what
the app left there when the connection is lost. Under another ASGI server the scope has none,
and requests run to the end as before.
"""

from __future__ import annotations

from typing import Callable

SCOPE_KEY = "pyserve.hangup"


class Hangup:
    """What to call if the client of one request hangs up before its answer is sent."""

    __slots__ = ("happened", "_calls")

    def __init__(self) -> None:
        self.happened = False
        self._calls: list[Callable[[], object]] = []

    def call_on_hangup(self, call: Callable[[], object]) -> None:
        """Calls `call` when the client hangs up; at once if it already has."""
        if self.happened:
            call()
        else:
            self._calls.append(call)

    def hung_up(self) -> None:
        """The connection is lost: every call registered runs, once."""
        if self.happened:
            return
        self.happened = True
        calls, self._calls = self._calls, []
        for call in calls:
            call()


def hangup_of(scope) -> Hangup | None:
    return scope.get(SCOPE_KEY)
