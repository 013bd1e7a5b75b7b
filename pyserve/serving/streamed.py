"""An answer that comes in parts: a handler's stream (continuous batching, and later
send_intermediate_predict_response), sent on as it is produced.

A request's future resolves to its Result when the first reply is its only one. When the
first reply is a part, the future resolves to a `Streamed` at once, and the parts after it
and the last reply arrive through it: a request that does not stream costs nothing extra.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Callable

from pyserve.frames import Result


@dataclass
class Streamed:
    first: Result
    parts: asyncio.Queue  # the parts after the first, as they come
    last: asyncio.Future  # the final reply
    withdraw: Callable[[], None] | None = None  # takes the request back from the core

    def cancel(self) -> None:
        """Nobody reads the rest: the request is withdrawn (its later parts are dropped)
        and `rest()` ends."""
        if self.last.cancel() and self.withdraw is not None:
            self.withdraw()

    async def rest(self):
        """The parts after the first, then the last, in the order they came; nothing more
        once the stream is cancelled (its client hung up). A reader that stops early (its
        task cancelled, or the generator closed) cancels the stream: the rest is not
        produced for nobody."""
        try:
            while True:
                getter = asyncio.ensure_future(self.parts.get())
                try:
                    await asyncio.wait([getter, self.last], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    got = getter.done()
                    if not got:
                        getter.cancel()
                if got:
                    yield getter.result()
                    continue
                if self.last.cancelled():
                    return
                while not self.parts.empty():
                    yield self.parts.get_nowait()
                yield self.last.result()
                return
        finally:
            if not self.last.done():
                self.cancel()
