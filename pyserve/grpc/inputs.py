"""A PredictionsRequest's `input` map as the request a worker reads: a multipart/form-data
body with one part per entry, named after its key and with no content type, so that the
handler finds each entry under its own name as bytes, as TorchServe hands gRPC inputs over.
The worker already parses forms, so gRPC needs nothing of its own there.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pyserve.errors import BadRequest


def _part_name(key: str) -> bytes:
    if "\r" in key or "\n" in key:  # would end the part's header early
        raise BadRequest(f"Input names cannot contain line breaks: {key!r}")
    return key.replace("\\", "\\\\").replace('"', '\\"').encode()


def form_body(inputs: Mapping[str, bytes]) -> tuple[str, bytes]:
    """(content type, body) carrying every entry of `inputs`."""
    boundary = os.urandom(16).hex().encode()
    while any(boundary in value for value in inputs.values()):
        boundary = os.urandom(16).hex().encode()
    parts = [b'--%s\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n'
             % (boundary, _part_name(key), value) for key, value in inputs.items()]
    if parts:
        parts.append(b"--%s--\r\n" % boundary)
    return f"multipart/form-data; boundary={boundary.decode()}", b"".join(parts)
