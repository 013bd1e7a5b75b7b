"""A stateful model's requests carry their sequence id, as TorchServe's frontend sets it.

A request without `ts_request_sequence_id` starts a new sequence: it gets the id
`ts-seq-<uuid>` and the header `ts_request_sequence_start: true`, so that its handler knows
(`context.get_sequence_id(idx)`, `context.get_request_header(idx, ...)`). The core groups a
sequence's requests by a 64-bit key made from the id (csrc/core/sequences.hpp); the id
itself travels to the handler in the headers.
"""

from __future__ import annotations

import hashlib
import uuid

SEQUENCE_ID = b"ts_request_sequence_id"
SEQUENCE_START = b"ts_request_sequence_start"


def sequence_key(sequence_id: bytes) -> int:
    """The core's key for a sequence id: never 0, which means "no sequence"."""
    return int.from_bytes(hashlib.blake2b(sequence_id, digest_size=8).digest(), "little") or 1


def with_sequence(headers: list) -> tuple[list, int]:
    """(the request's headers with its sequence id, the sequence's key)."""
    sequence_id = b""
    kept = []
    for name, value in headers:
        if name.lower() == SEQUENCE_ID:
            sequence_id = value.strip()
        else:
            kept.append((name, value))
    if not sequence_id:
        sequence_id = f"ts-seq-{uuid.uuid4()}".encode()
        kept.append((SEQUENCE_START, b"true"))
    kept.append((SEQUENCE_ID, sequence_id))
    return kept, sequence_key(sequence_id)
