"""Archives named by URL: `file://` paths and `http(s)://` downloads into the model store.

Only URLs matching an `allowed_urls` pattern are fetched. TorchServe's default allowed
every http(s) URL, which let anyone who could reach the management API make the server
fetch arbitrary URLs (SSRF); pyserve's default allows none, so remote registration is an
explicit choice.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlsplit

from pyserve.errors import ModelNotFound, ServeError

DOWNLOAD_TIMEOUT_SECONDS = 60


class DownloadFailed(ServeError):
    def __init__(self, url: str):
        super().__init__(400, "DownloadArchiveException", f"Failed to download archive from: {url}")


def is_url(url: str) -> bool:
    return urlsplit(url).scheme in ("file", "http", "https")


def url_allowed(url: str, allowed_urls: list[str]) -> bool:
    """Whether one of the allowed_urls patterns matches the whole URL."""
    return any(re.fullmatch(pattern, url) for pattern in allowed_urls)


def _download(url: str, target: Path) -> None:
    partial = target.with_name(f".{target.name}.part")
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_SECONDS) as response, \
                open(partial, "wb") as file:
            shutil.copyfileobj(response, file, 1024 * 1024)
        os.replace(partial, target)
    except (urllib.error.URLError, OSError, ValueError) as error:
        partial.unlink(missing_ok=True)
        raise DownloadFailed(url) from error


async def fetch(url: str, allowed_urls: list[str], model_store: str | None) -> tuple[Path, bool]:
    """The local archive or folder for `url`, and whether pyserve downloaded it."""
    if not url_allowed(url, allowed_urls):
        raise ModelNotFound(f"Given URL {url} does not match any allowed URL(s)")
    parts = urlsplit(url)
    if parts.scheme == "file":
        path = Path(unquote(parts.path))
        if not path.exists():
            raise ModelNotFound(f"Model not found at: {url}")
        return path, False
    name = os.path.basename(unquote(parts.path))
    if not name or model_store is None:
        raise DownloadFailed(url)
    target = Path(model_store) / name
    if target.exists():
        raise ServeError(500, "InternalServerException", f"Model file already exists {name}")
    await asyncio.to_thread(_download, url, target)
    return target, True
