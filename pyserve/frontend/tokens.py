"""Token authorization, as TorchServe 0.12 does it (on unless disabled).

At start the server writes key_file.json (mode 0600, whatever file was there) in its
working directory with three keys: one for the inference listener (every route, /ping
included), one for the management listener, and an API key that regenerates the other two
through `GET /token?type=...`. Clients send `Authorization: Bearer <key>` (the scheme in
any case). A missing, wrong or expired key is answered 400 InvalidKeyException, as
TorchServe does (not 401). The API description is answered without a key; the metrics
listener needs none.
"""

from __future__ import annotations

import base64
import datetime
import hmac
import json
import os
import re
import secrets
import tempfile
import time
from pathlib import Path
from typing import Protocol

from pyserve.errors import error_body

KEY_FILE = "key_file.json"
AUTHORIZATION_FAILED = ("Token Authorization failed. Token either incorrect, expired, or not "
                        "provided correctly")
AUTHENTICATION_FAILED = ("Token Authentication failed. Token either incorrect, expired, or not "
                         "provided correctly")
# The scheme is case-insensitive (RFC 7235 section 2.1); TorchServe takes only "Bearer".
_BEARER = re.compile(r"^Bearer\s+(\S+)$", re.IGNORECASE)
_OPEN_PATHS = ("/", "/api-description")


def _new_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(6)).decode()


class KeyCheck(Protocol):
    def valid(self, kind: str, authorization: str | None) -> bool: ...


def _valid(keys: dict[str, str], expires: dict[str, float], kind: str, authorization: str | None) -> bool:
    match = _BEARER.match(authorization or "")
    if match is None or kind not in keys:
        return False
    if kind in expires and time.time() > expires[kind]:
        return False
    return hmac.compare_digest(match.group(1), keys[kind])


class TokenKeys:
    """The three keys, their expiry, and the file clients read them from."""

    def __init__(self, directory: Path, expiration_minutes: float):
        self.path = Path(directory) / KEY_FILE
        self.lifetime = expiration_minutes * 60
        self.keys = {"inference": _new_key(), "management": _new_key(), "API": _new_key()}
        self.expires = {"inference": time.time() + self.lifetime,
                        "management": time.time() + self.lifetime}
        self.write()

    def write(self) -> None:
        def expiry(kind: str) -> str:
            moment = datetime.datetime.fromtimestamp(self.expires[kind], datetime.timezone.utc)
            return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

        content = {
            "management": {"key": self.keys["management"], "expiration time": expiry("management")},
            "inference": {"key": self.keys["inference"], "expiration time": expiry("inference")},
            "API": {"key": self.keys["API"]},
        }
        # A new file (mkstemp: mode 0600) renamed over the old one: whatever mode or link was
        # there before is gone, and a client never reads a half-written file.
        descriptor, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{KEY_FILE}.")
        try:
            with os.fdopen(descriptor, "w") as file:
                json.dump(content, file, indent=2)
            os.replace(temporary, self.path)
        except BaseException:
            os.unlink(temporary)
            raise

    def valid(self, kind: str, authorization: str | None) -> bool:
        return _valid(self.keys, self.expires, kind, authorization)

    def inference_only(self) -> dict:
        """What a frontend process needs to check inference requests: no other key."""
        return {"key": self.keys["inference"], "expires": self.expires["inference"]}

    def regenerate(self, kind: str) -> None:
        self.keys[kind] = _new_key()
        self.expires[kind] = time.time() + self.lifetime
        self.write()

    def remove_file(self) -> None:
        self.path.unlink(missing_ok=True)


class InferenceKey:
    """The inference key as a frontend process holds it, updated by the server."""

    def __init__(self, held: dict):
        self.update(held)

    def update(self, held: dict) -> None:
        self._keys = {"inference": held["key"]}
        self._expires = {"inference": held["expires"]}

    def valid(self, kind: str, authorization: str | None) -> bool:
        return _valid(self._keys, self._expires, kind, authorization)


class RequireToken:
    """ASGI wrapper that lets through only requests carrying the listener's key."""

    def __init__(self, app, keys: KeyCheck, kind: str):
        self.app = app
        self.keys = keys
        self.kind = kind

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in _OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
        kind = "API" if scope["path"] == "/token" else self.kind
        if self.keys.valid(kind, authorization):
            await self.app(scope, receive, send)
            return
        message = AUTHENTICATION_FAILED if kind == "API" else AUTHORIZATION_FAILED
        body = error_body(400, "InvalidKeyException", message)
        await send({"type": "http.response.start", "status": 400,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
