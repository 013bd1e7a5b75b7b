"""One HTTP connection, with the limits a server open to any client needs.

uvicorn's httptools protocol trusts its clients: it buffers a request head of any size for any
time, parses a whole read of pipelined requests at once and, after each answer, reads on
whether or not the client took the answer; nothing bounds how many connections are open. One
client that sent requests without reading the answers grew a frontend by 1.4 GB.
BoundedHttpTools keeps what one connection may cost bounded:

- A request head over MAX_REQUEST_HEAD bytes is answered 431; one not complete within
  REQUEST_HEAD_TIMEOUT of its first byte is answered 408 (a connection that sent nothing is
  only closed).
- A body that stops arriving (no bytes for REQUEST_BODY_TIMEOUT) or is not complete within
  REQUEST_BODY_DEADLINE of its head gets the connection closed: the handler sees a disconnect
  and nothing runs.
- Backpressure: while an answer is unsent beyond the transport's write buffer limit (64 KiB),
  the connection is not read and the next pipelined request does not start; an answer that
  has not drained below it within RESPONSE_WRITE_TIMEOUT gets the connection closed. At most
  MAX_PIPELINED parsed requests (and one PARSE_SLICE of bytes) wait behind the one being
  answered; the rest of a read waits unparsed, and the socket is not read meanwhile.
- A listener serves at most `max_connections` connections at once: one more is answered 503
  and closed. Connections already open are served as before.
- A client that hangs up before its answer is sent: its requests' `Hangup`s (in their scopes)
  are called, so that a prediction nobody waits for leaves the queue (pyserve.frontend.hangup).
- A connection closed while its client may still be sending (a 413 before the body was read,
  a refusal) lingers as nginx's does: the answer is sent, the write side shut, and what the
  client still sends is read and dropped for a while, so that the client reads the answer
  rather than a connection reset.

Idle keep-alive connections between requests are uvicorn's business (timeout_keep_alive).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from pyserve import access_log
from pyserve.errors import error_body
from pyserve.frontend.hangup import SCOPE_KEY, Hangup

log = logging.getLogger("pyserve.frontend")

MAX_REQUEST_HEAD = 64 * 1024  # bytes; TorchServe (Netty's defaults) allows 4 KiB + 8 KiB
REQUEST_HEAD_TIMEOUT = 60.0  # seconds, as nginx's client_header_timeout
REQUEST_BODY_TIMEOUT = 60.0  # seconds between two reads of a body, as nginx's client_body_timeout
REQUEST_BODY_DEADLINE = 300.0  # seconds from a request's head to the end of its body
RESPONSE_WRITE_TIMEOUT = 60.0  # seconds an answer may stay unsent beyond the write buffer limit
MAX_CONNECTIONS = 10_000  # per listener and process; the `max_connections` default
MAX_PIPELINED = 8  # parsed requests that may wait behind the one being answered
PARSE_SLICE = 16 * 1024  # bytes parsed at a time: 16 KiB of tiny requests cost ~1.5 MB parsed
LINGER_TIMEOUT = 5.0  # seconds a lingering connection waits for more bytes (nginx's lingering_timeout)
LINGER_TIME = 30.0  # seconds a connection lingers at most (nginx's lingering_time)
LINGER_BYTES = 64 * 1024 * 1024  # bytes a lingering connection reads and drops at most
FULL_WARNING_INTERVAL = 60.0  # seconds between two warnings that a listener is full


@dataclass(frozen=True)
class ConnectionLimits:
    max_head: int = MAX_REQUEST_HEAD
    head_timeout: float = REQUEST_HEAD_TIMEOUT
    body_timeout: float = REQUEST_BODY_TIMEOUT
    body_deadline: float = REQUEST_BODY_DEADLINE
    write_timeout: float = RESPONSE_WRITE_TIMEOUT
    max_connections: int = MAX_CONNECTIONS


class HeadTooLarge(Exception):
    """Raised in a parser callback: the request head is over the limit."""


class ConnectionTransport:
    """The transport as uvicorn's code sees it. uvicorn pauses and resumes reading for its own
    reasons; the socket is read only when the connection's limits allow it too. close() is
    the connection's (see BoundedHttpTools.close)."""

    def __init__(self, transport, connection: BoundedHttpTools):
        self.connection = connection
        self.paused = False  # by uvicorn
        self.write = transport.write
        self.get_extra_info = transport.get_extra_info
        self.set_protocol = transport.set_protocol
        self._socket_closing = transport.is_closing

    def is_closing(self) -> bool:
        return self.connection.closing or self._socket_closing()

    def close(self) -> None:
        self.connection.close()

    def pause_reading(self) -> None:
        self.paused = True
        self.connection.update_reading()

    def resume_reading(self) -> None:
        self.paused = False
        self.connection.update_reading()


class BoundedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of the module docstring.

    A head is measured two ways. While it is incomplete, the chunks received are added up, since
    llhttp buffers a header until its end: a header that never ends is refused once the head
    passes the limit, at most one read later. When it is complete, its target and headers are
    added up, exactly, but only if the bytes received could hold a head that large (a head that
    fits in a small chunk costs one comparison). A chunk that also holds body bytes, or the end
    of one request and the start of the next (pipelining), is not added up: no request is
    refused for its body.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.limits: ConnectionLimits = getattr(self.config, "pyserve_limits", ConnectionLimits())
        self.closing = False  # closed, or lingering, by this side
        self._socket = None  # the transport itself; uvicorn's code sees a ConnectionTransport
        self._reading = True
        self._lost = False
        self._stopping = False  # the listener is shutting down: no lingering
        # the request head being received
        self._in_head = True
        self._head_bytes = 0  # chunks received within the current head, before the last one
        self._chunk = 0  # the last chunk parsed
        self._too_large = False
        self._heads = 0  # heads completed so far on this connection
        self._head_timer = None
        # its body
        self._in_body = False  # a head arrived and its body is not complete yet
        self._body_parsed = 0  # bytes of it parsed so far
        self._body_started_at = 0.0  # loop time the body's head was read
        self._body_read_at = 0.0  # loop time of its last bytes
        self._body_timer = None
        # backpressure
        self._held = b""  # bytes read and not parsed yet, while parsing waits
        self._unanswered: deque = deque()  # the cycles whose answer is not complete, oldest first
        self._write_paused = False  # unsent answers are beyond the write buffer limit
        self._write_timer = None
        self._answer_unsent = False  # an answer completed while unsent: the next request waits
        # lingering
        self._lingering = False
        self._linger_ends_at = 0.0
        self._linger_read_at = 0.0
        self._linger_bytes = 0
        self._linger_timer = None
        recorder = access_log.for_connection(self)  # access_log.log, through uvicorn's hook
        if recorder is not None:
            self.access_log, self.access_logger = True, recorder

    # -- the connection ---------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self._socket = transport
        super().connection_made(ConnectionTransport(transport, self))
        if len(self.connections) > self.limits.max_connections:
            self._refuse_connection()
        else:
            self._arm_head_timer()

    def connection_lost(self, exc) -> None:
        self._lost = True
        for timer in (self._head_timer, self._body_timer, self._write_timer, self._linger_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = self._write_timer = self._linger_timer = None
        # uvicorn tells only the last request parsed; the one being answered may be another
        for cycle in self._unanswered:
            cycle.disconnected = True
            cycle.message_event.set()
            cycle.scope[SCOPE_KEY].hung_up()
        self._unanswered.clear()
        self.pipeline.clear()
        self._held = b""
        super().connection_lost(exc)

    def close(self) -> None:
        """Closes the connection; lingers first while the client may still be sending."""
        if self.closing or self._lost:
            return
        self._cancel_head_timer()
        if not self._stopping and self._may_still_send():
            self._linger()
        else:
            self._close_now()

    def shutdown(self) -> None:
        self._stopping = True
        if self._lingering:
            self._close_now()
        else:
            super().shutdown()

    def _close_now(self) -> None:
        self.closing = True
        self._socket.close()

    def _may_still_send(self) -> bool:
        return self._in_body or bool(self._held) or (self._in_head and self._head_bytes > 0)

    # -- reading ----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._held or self._lingering or self._write_paused or len(self.pipeline) >= MAX_PIPELINED:
            if self._lingering:
                self._drop(data)
            else:
                self._held += data
                self.update_reading()
        elif len(data) <= PARSE_SLICE:  # most requests: one chunk, parsed at once
            self._feed(data)
            if len(self.pipeline) >= MAX_PIPELINED:
                self.update_reading()
        else:
            self._parse(data)

    def update_reading(self) -> None:
        """Reads the socket only while uvicorn wants to and the limits allow: nothing waits
        unparsed, few requests wait to be answered, and the answers so far are sent."""
        wanted = self._lingering or not (self.transport.paused or self._held or self._parsing_waits())
        if wanted == self._reading or self._lost or self._socket.is_closing():
            return
        self._reading = wanted
        if wanted:
            self._socket.resume_reading()
        else:
            self._socket.pause_reading()

    def _parsing_waits(self) -> bool:
        return self._write_paused or len(self.pipeline) >= MAX_PIPELINED

    def _parse(self, data) -> None:
        """Parses `data` a slice at a time (the rest of a body of known length at once), so
        that parsing can stop when it must wait, keeping the rest for later."""
        view = memoryview(data)
        start, end = 0, len(data)
        while start < end and not self.transport.is_closing():
            if self._parsing_waits():
                self._held = bytes(view[start:])
                break
            body_left = self._declared_length() - self._body_parsed if self._in_body else 0
            step = max(body_left, PARSE_SLICE)
            self._feed(view[start:start + step])
            start += step
        self.update_reading()

    def _feed(self, data) -> None:
        in_head, heads = self._in_head, self._heads
        self._chunk = len(data)
        super().data_received(data)
        if self._in_body:  # one float per chunk; the timer is armed once per slow body
            self._body_read_at = self.loop.time()
            if self._body_timer is None:
                self._body_started_at = self._body_read_at
                self._body_timer = self.loop.call_later(
                    min(self.limits.body_timeout, self.limits.body_deadline), self._body_timed_out)
        if not (in_head and self._in_head) or self._heads != heads or self.transport.is_closing():
            return  # the chunk ended a head or held body bytes: nothing to count or time
        self._head_bytes += len(data)
        if self._head_bytes > self.limits.max_head:
            self._refuse(431, "Request header fields too large.")
        else:
            self._arm_head_timer()

    def _continue(self) -> None:
        """Parses what was held back, if parsing may go on; reads again if reading waited.
        After most answers there is nothing held and reading is on: two checks."""
        if self._held:
            if not self._parsing_waits() and not self.transport.is_closing():
                held, self._held = self._held, b""
                self._parse(held)
            else:
                self.update_reading()
        elif not self._reading:
            self.update_reading()

    # -- parser callbacks -------------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        if self._too_large:
            self._refuse(431, "Request header fields too large.")
        else:
            super().send_400_response(msg)

    def on_headers_complete(self) -> None:
        if self._head_bytes + self._chunk > self.limits.max_head and self._head_size() > self.limits.max_head:
            self._too_large = True
            raise HeadTooLarge()  # stops the parser; uvicorn answers through send_400_response
        self._in_head = False
        self._heads += 1
        self._head_bytes = 0
        self._cancel_head_timer()
        self._in_body = True
        self._body_parsed = 0
        previous = self.cycle
        super().on_headers_complete()
        if self.cycle is not previous:  # no new cycle for an upgrade
            self.cycle.started_at = self.loop.time()
            self.cycle.scope[SCOPE_KEY] = Hangup()
            self._unanswered.append(self.cycle)

    def on_body(self, body: bytes) -> None:
        self._body_parsed += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_body = False
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().on_message_complete()
        self._in_head = True  # the next bytes begin the next request: its timer starts with them

    def _declared_length(self) -> int:
        """The Content-Length of the request being received; 0 for a chunked body."""
        for name, value in self.headers:
            if name == b"content-length":
                return int(value) if value.isdigit() else 0
        return 0

    def _head_size(self) -> int:
        """The request target and headers as received (uvicorn keeps them), with ": " and CRLFs."""
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    # -- answers ----------------------------------------------------------------------------

    def answering(self):
        """The request cycle whose answer is being sent: answers go out in order."""
        return self._unanswered[0] if self._unanswered else None

    def on_response_complete(self) -> None:
        if self._unanswered:
            self._unanswered.popleft()
        if self._write_paused and not self.transport.is_closing():
            self._answer_unsent = True  # resume_writing starts the next request
            return
        super().on_response_complete()
        self._continue()

    def pause_writing(self) -> None:
        super().pause_writing()
        self._write_paused = True
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self.limits.write_timeout, self._write_timed_out)
        self.update_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._write_paused = False
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        if self._answer_unsent:
            self._answer_unsent = False
            super().on_response_complete()
        self._continue()

    def _write_timed_out(self) -> None:
        self._write_timer = None
        if self._write_paused and not self._lost:  # a client that does not read its answers
            self.closing = True
            self._socket.abort()

    # -- timers -----------------------------------------------------------------------------

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.limits.head_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._in_head or self.transport.is_closing():
            return
        if self._head_bytes:
            self._refuse(408, "Request head not received in time.")
        else:  # nothing of a request arrived: no answer, which a client could take for its own
            self._close_now()

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if not self._in_body or self.transport.is_closing():
            return
        now = self.loop.time()
        left = min(self.limits.body_timeout - (now - self._body_read_at),
                   self._body_started_at + self.limits.body_deadline - now)
        if left > 0:
            self._body_timer = self.loop.call_later(left, self._body_timed_out)
        else:  # the handler gets http.disconnect and runs nothing
            self._close_now()

    # -- refusals and lingering -------------------------------------------------------------

    def _refuse(self, status: int, message: str) -> None:
        """Answers `status` and closes, unless a response is still owed on this connection
        (pipelining): then it only closes, so that no answer comes out of order."""
        self._cancel_head_timer()
        if self.cycle is None or self.cycle.response_complete:
            self._write_answer(status, b"text/plain; charset=utf-8", message.encode(), ())
        self.close()

    def _refuse_connection(self) -> None:
        """One connection over max_connections: a 503 that says so, then a lingering close."""
        limit = self.limits.max_connections
        warned_at = getattr(self.server_state, "pyserve_full_warned_at", None)
        if warned_at is None or self.loop.time() - warned_at >= FULL_WARNING_INTERVAL:
            self.server_state.pyserve_full_warned_at = self.loop.time()
            log.warning("%d connections are open: new ones are answered 503 (max_connections=%d)",
                        len(self.connections) - 1, limit)
        body = error_body(503, "ServiceUnavailableException",
                          f"Too many connections: this server takes {limit} at once (max_connections); retry later")
        self._write_answer(503, b"application/json", body, (b"retry-after: 1\r\n",))
        self._linger()

    def _write_answer(self, status: int, content_type: bytes, body: bytes, extra: tuple) -> None:
        self._socket.write(b"".join([
            STATUS_LINE[status], b"content-type: ", content_type, b"\r\n",
            b"content-length: %d\r\n" % len(body), *extra, b"connection: close\r\n\r\n", body]))

    def _linger(self) -> None:
        """Sends what is written, shuts the write side (TLS cannot: its client stops at the
        answer's end, as the answer says connection: close), then reads and drops what comes
        until the client closes, stays silent LINGER_TIMEOUT, or LINGER_TIME or LINGER_BYTES
        run out."""
        self.closing = self._lingering = True
        self._held = b""
        self.pipeline.clear()
        if self._socket.can_write_eof():
            self._socket.write_eof()
        now = self.loop.time()
        self._linger_ends_at = now + LINGER_TIME
        self._linger_read_at = now
        self._linger_timer = self.loop.call_later(LINGER_TIMEOUT, self._linger_timed_out)
        self.update_reading()

    def _drop(self, data: bytes) -> None:
        self._linger_bytes += len(data)
        self._linger_read_at = self.loop.time()
        if self._linger_bytes > LINGER_BYTES:
            self._socket.close()

    def _linger_timed_out(self) -> None:
        self._linger_timer = None
        now = self.loop.time()
        left = min(self._linger_read_at + LINGER_TIMEOUT, self._linger_ends_at) - now
        if left > 0:
            self._linger_timer = self.loop.call_later(left, self._linger_timed_out)
        else:
            self._socket.close()
