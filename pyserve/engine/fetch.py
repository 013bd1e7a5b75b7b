"""Archives named by URL: `file://` paths and `http(s)://` downloads into the model store.

Only URLs matching an `allowed_urls` pattern are fetched (engine/allowed_urls.py says how they
are matched). TorchServe's default allowed every http(s) URL, which let anyone who could reach
the management API make the server fetch arbitrary URLs (SSRF); pyserve's default allows
none, so remote registration is an explicit choice. Redirects are followed by hand, each hop
matched again, and a download is held to max_download_size and download_timeout: an allowed
host must not be able to lead the server elsewhere, fill its disk or hold it forever.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

from pyserve.config import Settings
from pyserve.engine.allowed_urls import check_http_url, file_url_path, resolved, url_allowed
from pyserve.errors import ModelNotFound, ServeError

READ_TIMEOUT_SECONDS = 60  # a server silent this long fails the download before download_timeout
MAX_REDIRECTS = 10  # urllib's own cap
REDIRECT_CODES = (301, 302, 303, 307, 308)
CHUNK_BYTES = 1 << 20


class DownloadFailed(ServeError):
    def __init__(self, url: str, reason: str = "", code: int = 400):
        message = f"Failed to download archive from: {url}" + (f": {reason}" if reason else "")
        super().__init__(code, "DownloadArchiveException", message)


def is_url(url: str) -> bool:
    return urlsplit(url).scheme in ("file", "http", "https")


class _Watchdog:
    """The sockets of one download, shut down when its time is up wherever a read is blocked."""

    def __init__(self):
        self.expired = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
        if self.expired.is_set():
            self.expire()

    def expire(self) -> None:
        self.expired.set()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:  # closed already
                pass


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Redirects come back as HTTPError, for _open to match before following them."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def _opener(watchdog: _Watchdog) -> urllib.request.OpenerDirector:
    def tracked(base: type[http.client.HTTPConnection]) -> type[http.client.HTTPConnection]:
        class Tracked(base):
            def connect(self) -> None:
                super().connect()
                watchdog.track(self.sock)
        return Tracked

    plain, secure = tracked(http.client.HTTPConnection), tracked(http.client.HTTPSConnection)
    context = ssl.create_default_context()

    class HTTP(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(plain, req)

    class HTTPS(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(secure, req, context=context)

    return urllib.request.build_opener(_NoRedirects, HTTP, HTTPS(context=context))


def _open(url: str, settings: Settings, opener: urllib.request.OpenerDirector):
    """The response for `url`, following at most MAX_REDIRECTS redirects, each one allowed."""
    timeout = min(READ_TIMEOUT_SECONDS, settings.download_timeout)
    hop = url
    for _ in range(MAX_REDIRECTS + 1):
        try:
            return opener.open(hop, timeout=timeout)
        except urllib.error.HTTPError as error:
            error.close()
            location = error.headers.get("Location")
            if error.code not in REDIRECT_CODES or not location:
                raise
            hop = urljoin(hop, location.strip())
            check_http_url(hop, settings.allowed_urls, f"Given URL {url} redirects to {hop}, which")
    raise DownloadFailed(url, f"more than {MAX_REDIRECTS} redirects")


def _copy(response, file, url: str, settings: Settings, deadline: float) -> None:
    limit = settings.max_download_size
    too_large = f"larger than max_download_size ({limit} bytes)"
    length = response.headers.get("Content-Length", "").strip()
    declared = int(length) if length.isdigit() else None
    if declared is not None and declared > limit:
        raise DownloadFailed(url, too_large)
    total = 0
    while chunk := response.read(CHUNK_BYTES):
        total += len(chunk)
        if total > limit:
            raise DownloadFailed(url, too_large)
        if time.monotonic() > deadline:
            raise _timed_out(url, settings)
        file.write(chunk)
    if declared is not None and total < declared:  # http.client's read(n) does not say so
        raise DownloadFailed(url, f"the body ended after {total} of its {declared} bytes")


def _timed_out(url: str, settings: Settings) -> DownloadFailed:
    return DownloadFailed(url, f"not done within download_timeout ({settings.download_timeout} s)", 504)


def _download(url: str, target: Path, settings: Settings, watchdog: _Watchdog, deadline: float) -> None:
    """Downloads into a hidden partial file, renamed to `target` once whole; removed otherwise."""
    partial = target.with_name(f".{target.name}.part")
    try:
        _download_into(partial, url, settings, watchdog, deadline)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def _download_into(partial: Path, url: str, settings: Settings, watchdog: _Watchdog,
                   deadline: float) -> None:
    try:
        with _open(url, settings, _opener(watchdog)) as response, open(partial, "wb") as file:
            _copy(response, file, url, settings, deadline)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError,
            DownloadFailed) as error:
        if watchdog.expired.is_set():  # whatever broke, the deadline broke it
            raise _timed_out(url, settings) from error
        if isinstance(error, DownloadFailed):
            raise
        raise DownloadFailed(url) from error
    if watchdog.expired.is_set():  # a socket shut at the deadline can read as a clean end
        raise _timed_out(url, settings)


async def fetch(url: str, settings: Settings) -> tuple[Path, bool]:
    """The local archive or folder for `url`, and whether pyserve downloaded it."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        path, as_url = resolved(file_url_path(url))
        if not url_allowed(as_url, settings.allowed_urls):
            resolves = f" (it resolves to {as_url})" if as_url != url else ""
            raise ModelNotFound(f"Given URL {url}{resolves} does not match any allowed URL(s)")
        if not path.exists():
            raise ModelNotFound(f"Model not found at: {url}")
        return path, False
    check_http_url(url, settings.allowed_urls, f"Given URL {url}")
    name = os.path.basename(unquote(parts.path))
    if not name or settings.model_store is None:
        raise DownloadFailed(url)
    target = Path(settings.model_store) / name
    if target.exists():
        # TorchServe answers 500 InternalServerException; the conflict is the client's to solve.
        raise ServeError(409, "ConflictStatusException", f"Model file already exists {name}")
    watchdog = _Watchdog()
    deadline = time.monotonic() + settings.download_timeout
    timer = asyncio.get_running_loop().call_later(settings.download_timeout, watchdog.expire)
    try:
        await asyncio.to_thread(_download, url, target, settings, watchdog, deadline)
    finally:
        timer.cancel()
    return target, True
