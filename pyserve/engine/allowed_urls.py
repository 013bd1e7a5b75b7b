"""Whether a model URL is allowed: each URL is brought to one form before it is matched against
allowed_urls, so that no other spelling of it reaches what the patterns do not name.

- A file:// URL is percent-decoded exactly once and resolved (`..`, symlinks) to the real path;
  that path's file:// URL is what is matched. An absolute path given through the management
  API is matched the same way (it arrives decoded once already, by the query string).
- An http(s) URL is matched as given, at its first hop and at every redirect; a path that
  climbs with `..` is refused, since the server would resolve it after the match.
- What one decoding leaves as an escape of '.', '/' or '%' (a URL encoded twice) is refused:
  a layer that decodes again, after the match, would read a different path.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

from pyserve.errors import BadRequest, ModelNotFound

_DOUBLE_ENCODED = re.compile(r"%(2e|2f|25)", re.IGNORECASE)


def url_allowed(url: str, allowed_urls: list[str]) -> bool:
    """Whether one of the allowed_urls patterns matches the whole URL."""
    return any(re.fullmatch(pattern, url) for pattern in allowed_urls)


def refuse_double_encoding(decoded: str, given: str) -> None:
    if _DOUBLE_ENCODED.search(decoded):
        raise BadRequest(f"URL {given} is percent-encoded more than once: "
                         "an escape of '.', '/' or '%' is left after decoding it")


def file_url_path(url: str) -> Path:
    """The local path a file:// URL names, decoded once."""
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise BadRequest(f"URL {url} names host {parts.netloc}: a file:// URL must name a local path")
    path = unquote(parts.path)
    refuse_double_encoding(path, url)
    if not path.startswith("/"):
        raise BadRequest(f"URL {url} must name an absolute path")
    return Path(path)


def resolved(path: Path) -> tuple[Path, str]:
    """(the real path: no `..`, no symlinks, its file:// URL): what allowed_urls is matched with."""
    real = Path(os.path.realpath(path))
    return real, real.as_uri()


def check_http_url(url: str, allowed_urls: list[str], subject: str) -> None:
    """Refuses an http(s) hop that is not allowed; `subject` opens the message ("Given URL x")."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ModelNotFound(f"{subject} is not an http(s) URL: only http(s) redirects are followed")
    path = unquote(parts.path)
    refuse_double_encoding(path, url)
    if ".." in re.split(r"[/\\]", path):
        raise ModelNotFound(f"Relative path is not allowed in url: {url}")
    if not url_allowed(url, allowed_urls):
        raise ModelNotFound(f"{subject} does not match any allowed URL(s)")
