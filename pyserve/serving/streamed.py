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

    async def bodies(self):
        """Every part's body, the first one included, as it comes: an HTTP chunk each."""
        yield self.first.body
        async for part in self.rest():
            yield part.body

    async def whole(self) -> Result:
        """The answer in one piece, for a protocol with a single response: the parts joined,
        the first part's status and headers."""
        bodies = [body async for body in self.bodies()]
        return self.first._replace(body=b"".join(bodies), more=False)

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
