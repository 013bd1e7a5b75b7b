"""The control link between the server process and one frontend process: a socketpair
carrying length-prefixed msgpack maps, each with an "op".

Server to frontend: ``hello`` (settings, version; first), ``state`` (a numbered snapshot of
the models, the server's health and the inference key; acknowledged), ``counters`` (asks for
the frontend's request counters). Frontend to server: ``ready`` (its listener serves),
``ack`` (a state is in force), ``counters`` (the answer; also sent once more as it exits).
Requests themselves never cross the link: they go through the frontend's channel.
"""

from __future__ import annotations

import asyncio
import struct

import msgpack

MAX_MESSAGE = 64 * 1024 * 1024  # a snapshot of thousands of models fits many times over
_LENGTH = struct.Struct(">I")


class LinkClosed(Exception):
    """The other side went away, or sent something that is not a link message."""


async def read_message(reader: asyncio.StreamReader) -> dict:
    try:
        (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
        if length > MAX_MESSAGE:
            raise LinkClosed(f"a link message of {length} bytes")
        message = msgpack.unpackb(await reader.readexactly(length), raw=False)
    except (asyncio.IncompleteReadError, ConnectionError, ValueError, msgpack.UnpackException) as error:
        raise LinkClosed(str(error)) from None
    if not isinstance(message, dict) or "op" not in message:
        raise LinkClosed("a link message without an op")
    return message


def write_message(writer: asyncio.StreamWriter, message: dict) -> None:
    payload = msgpack.packb(message, use_bin_type=True)
    writer.write(_LENGTH.pack(len(payload)) + payload)
