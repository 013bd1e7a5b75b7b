"""allowed_urls holds for what is really fetched: every redirect hop, the real path of a file://
URL or API path, and downloads capped in size and time. Real HTTP servers on loopback, a real
tree with `..` and symlinks, and a real pyserve registering through its management API."""

from __future__ import annotations

import http.server
import os
import ssl
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from helpers import EXAMPLES, archive_model, start_server
from pyserve.config import ConfigError, load_settings

MAX_DOWNLOAD_SIZE = 64 * 1024
DOWNLOAD_TIMEOUT = 2
BIG_BODY = 1024 * 1024
SLOW_BODY, SLOW_STEP, SLOW_PAUSE = 10_000, 100, 0.1  # 10 s to send it all


class WebHandler(http.server.BaseHTTPRequestHandler):
    """/<any>.mar serves the archive; ?code=302&to=URL redirects; /allowed/loop/N.mar redirects
    to N+1 forever; /allowed/big.mar and big-unsized.mar are over the cap, with and without
    Content-Length; /allowed/slow.mar trickles."""

    archive = b""

    def do_GET(self):
        path, query = urlsplit(self.path).path, parse_qs(urlsplit(self.path).query)
        try:
            if "to" in query:
                self.redirect(int(query.get("code", ["302"])[0]), query["to"][0])
            elif path.startswith("/allowed/loop/"):
                hop = int(Path(path).stem)
                self.redirect(302, f"/allowed/loop/{hop + 1}.mar")
            elif path == "/allowed/big.mar":
                self.send(b"\0" * BIG_BODY, length=True)
            elif path == "/allowed/big-unsized.mar":
                self.send(b"\0" * BIG_BODY, length=False)
            elif path == "/allowed/slow.mar":
                self.trickle()
            elif path.endswith(".mar"):
                self.send(self.archive, length=True)
            else:
                self.send_error(404)
        except (BrokenPipeError, ConnectionResetError):  # pyserve stopped reading: as it should
            pass

    def redirect(self, code: int, location: str) -> None:
        self.send_response(code)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def send(self, body: bytes, length: bool) -> None:
        self.send_response(200)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def trickle(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(SLOW_BODY))
        self.end_headers()
        for _ in range(SLOW_BODY // SLOW_STEP):
            self.wfile.write(b"\0" * SLOW_STEP)
            self.wfile.flush()
            time.sleep(SLOW_PAUSE)

    def log_message(self, *args) -> None:
        pass


def serve_web(archive: bytes, certificate: Path | None = None):
    """A web server on loopback; over TLS with `certificate` (a PEM holding cert and key)."""
    web = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), type("Web", (WebHandler,), {"archive": archive}))
    if certificate is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certificate)
        web.socket = context.wrap_socket(web.socket, server_side=True)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    return web


def web_url(web) -> str:
    scheme = "https" if isinstance(web.socket, ssl.SSLSocket) else "http"
    return f"{scheme}://127.0.0.1:{web.server_address[1]}"


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> bytes:
    made = archive_model(tmp_path_factory.mktemp("made"), "echo", EXAMPLES / "echo" / "echo_handler.py")
    return made.read_bytes()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> Path:
    """A self-signed certificate for 127.0.0.1 and its key, in one PEM the server trusts."""
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem")],
                   check=True, capture_output=True)
    (folder / "both.pem").write_text((folder / "cert.pem").read_text() + (folder / "key.pem").read_text())
    return folder / "both.pem"


@pytest.fixture(scope="module")
def webs(archive, certificate):
    """[allowed, elsewhere, allowed over https]: web servers; /allowed/ of the first and third
    are allowed, nothing of the second."""
    servers = [serve_web(archive), serve_web(archive), serve_web(archive, certificate)]
    yield [web_url(web) for web in servers]
    for web in servers:
        web.shutdown()
        web.server_close()


@pytest.fixture(scope="module")
def tree(tmp_path_factory, archive) -> Path:
    """allowed/ (model.mar, sub/, and symlinks to outside/) and outside/ (model.mar)."""
    tree = tmp_path_factory.mktemp("tree").resolve()
    for folder in ("allowed/sub", "outside"):
        (tree / folder).mkdir(parents=True)
    for folder in ("allowed", "outside"):
        (tree / folder / "model.mar").write_bytes(archive)
    os.symlink(tree / "outside" / "model.mar", tree / "allowed" / "link.mar")
    os.symlink(tree / "outside", tree / "allowed" / "linkdir")
    return tree


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def server(webs, tree, store, certificate, tmp_path_factory):
    server = start_server(
        tmp_path_factory.mktemp("server"), store, [], env={"SSL_CERT_FILE": str(certificate)},
        enable_model_api="true",
        allowed_urls=f"{webs[0]}/allowed/.*,{webs[2]}/allowed/.*,file://{tree}/allowed/.*",
        max_download_size=MAX_DOWNLOAD_SIZE, download_timeout=DOWNLOAD_TIMEOUT)
    yield server
    server.stop()


@pytest.fixture
def register(api, store):
    """Registers with no workers, as `name`; the model is unregistered after the test, and the
    model store must then hold what it held before (no download, no partial file)."""
    before = set(store.iterdir())
    names = []

    def register(url: str, name: str) -> httpx.Response:
        names.append(name)
        return api.post("/models", params={"url": url, "model_name": name, "initial_workers": 0})

    yield register
    for name in names:
        api.delete(f"/models/{name}")
    assert set(store.iterdir()) == before


def refused(response: httpx.Response, code: int, *named: str) -> bool:
    message = response.json()["message"]
    return response.status_code == code and all(part in message for part in named)


def not_registered(api: httpx.Client, name: str) -> bool:
    return api.get(f"/models/{name}").status_code == 404


# -- redirects ----------------------------------------------------------------------------

def test_a_redirect_to_an_allowed_url_is_followed(register, webs):
    response = register(f"{webs[0]}/allowed/moved.mar?code=302&to={webs[2]}/allowed/echo.mar", "moved")
    assert response.status_code == 200, response.text


def test_a_download_over_https_from_a_trusted_server_is_registered(register, webs):
    response = register(f"{webs[2]}/allowed/echo.mar", "secure")
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("code", [301, 302, 307])
def test_a_redirect_to_another_host_is_refused_naming_it(register, api, store, webs, code):
    target = f"{webs[1]}/allowed/echo.mar"
    response = register(f"{webs[0]}/allowed/moved.mar?code={code}&to={target}", "moved")
    assert refused(response, 404, target, "does not match any allowed URL"), response.text
    assert not_registered(api, "moved")
    assert not list(store.iterdir())  # no download, no partial file


def test_a_redirect_to_a_path_not_allowed_on_the_same_host_is_refused(register, api, store, webs):
    target = f"{webs[0]}/private/echo.mar"
    response = register(f"{webs[0]}/allowed/moved.mar?to={target}", "moved")
    assert refused(response, 404, target, "does not match any allowed URL"), response.text
    assert not_registered(api, "moved")
    assert not list(store.iterdir())  # no download, no partial file


def test_a_redirect_to_a_file_url_is_refused_naming_it(register, webs, tree):
    target = f"file://{tree}/allowed/model.mar"
    response = register(f"{webs[0]}/allowed/moved.mar?to={target}", "moved")
    assert refused(response, 404, target, "only http(s) redirects are followed"), response.text


def test_more_than_ten_redirects_are_refused(register, api, webs):
    response = register(f"{webs[0]}/allowed/loop/0.mar", "loop")
    assert refused(response, 400, "more than 10 redirects"), response.text
    assert not_registered(api, "loop")


def test_an_http_path_climbing_out_with_dot_dot_is_refused(register, api, webs):
    for climb in ("..", "%2e%2e", "%2E."):
        response = register(f"{webs[0]}/allowed/{climb}/private/echo.mar", "climb")
        assert refused(response, 404, "Relative path is not allowed"), response.text
    assert not_registered(api, "climb")


def test_an_http_url_encoded_twice_is_400(register, webs):
    response = register(f"{webs[0]}/allowed/%252e%252e/private/echo.mar", "twice")
    assert refused(response, 400, "percent-encoded more than once"), response.text


# -- file:// URLs and paths ---------------------------------------------------------------

@pytest.mark.parametrize("climb", ["..", "%2e%2e", "%2E%2e", ".%2e", "sub/../.."])
def test_a_file_url_climbing_out_of_the_allowed_tree_is_refused(register, api, tree, climb):
    response = register(f"file://{tree}/allowed/{climb}/outside/model.mar", "climb")
    assert refused(response, 404, f"resolves to file://{tree}/outside/model.mar",
                   "does not match any allowed URL"), response.text
    assert not_registered(api, "climb")


def test_a_file_url_whose_dot_dot_stays_in_the_allowed_tree_is_registered(register, tree):
    response = register(f"file://{tree}/allowed/sub/%2e%2e/model.mar", "inside")
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("encoded", ["%252e%252e", "%252E%252E", "sub%252f..", "%2525"])
def test_a_file_url_encoded_twice_is_400(register, tree, encoded):
    response = register(f"file://{tree}/allowed/{encoded}/outside/model.mar", "twice")
    assert refused(response, 400, "percent-encoded more than once"), response.text


@pytest.mark.parametrize("link", ["link.mar", "linkdir/model.mar"])
def test_a_symlink_in_the_allowed_tree_pointing_outside_it_is_refused(register, api, tree, link):
    response = register(f"file://{tree}/allowed/{link}", "linked")
    assert refused(response, 404, "does not match any allowed URL"), response.text
    assert not_registered(api, "linked")


def test_an_api_path_encoded_twice_is_400(register, tree):
    # The query string is the one decoding: %252e arrives as %2e
    response = register(f"{tree}/allowed/%2e%2e/outside/model.mar", "twice")
    assert refused(response, 400, "percent-encoded more than once"), response.text


def test_a_file_url_naming_a_host_is_400(register, tree):
    response = register(f"file://elsewhere{tree}/allowed/model.mar", "hosted")
    assert refused(response, 400, "must name a local path"), response.text


# -- download limits ----------------------------------------------------------------------

def test_a_download_declared_over_max_download_size_is_refused_naming_it(register, api, store, webs):
    response = register(f"{webs[0]}/allowed/big.mar", "big")
    assert refused(response, 400, f"max_download_size ({MAX_DOWNLOAD_SIZE} bytes)"), response.text
    assert not_registered(api, "big")
    assert not list(store.iterdir())  # no download, no partial file


def test_a_download_growing_past_max_download_size_is_stopped(register, api, store, webs):
    response = register(f"{webs[0]}/allowed/big-unsized.mar", "big")
    assert refused(response, 400, f"max_download_size ({MAX_DOWNLOAD_SIZE} bytes)"), response.text
    assert not_registered(api, "big")
    assert not list(store.iterdir())  # no download, no partial file


@pytest.mark.parametrize("web", [0, 2], ids=["http", "https"])
def test_a_download_slower_than_download_timeout_is_stopped(register, api, store, webs, web):
    started = time.monotonic()
    response = register(f"{webs[web]}/allowed/slow.mar", "slow")
    assert refused(response, 504, f"download_timeout ({DOWNLOAD_TIMEOUT} s)"), response.text
    assert time.monotonic() - started < DOWNLOAD_TIMEOUT + 4  # the whole body takes 10 s
    assert not_registered(api, "slow")
    assert not list(store.iterdir())  # no download, no partial file


def test_download_limits_default_to_1_gib_and_600_seconds():
    settings = load_settings(env={})
    assert (settings.max_download_size, settings.download_timeout) == (1 << 30, 600)


@pytest.mark.parametrize("key", ["max_download_size", "download_timeout"])
def test_a_download_limit_below_1_is_refused_at_start(tmp_path, key):
    config = tmp_path / "config.properties"
    config.write_text(f"{key}=0\n")
    with pytest.raises(ConfigError, match=key):
        load_settings(config, env={})
