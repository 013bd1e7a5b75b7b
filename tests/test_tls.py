"""An https:// listener address is served over TLS, with TorchServe's keys: `private_key_file`
and `certificate_file` (PEM), or `keystore` (PKCS12, `keystore_pass`). When TLS cannot be set
up the server refuses to start and says why; it never serves plain HTTP there.

The certificates are made by each test session (self-signed, for 127.0.0.1).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from helpers import start_server
from pyserve.control import spawn_server, write_loopback_config

TIMEOUT = 30
KEYSTORE_PASS = "not-changeit"
HTTPS = {"inference_address": "https://127.0.0.1:0", "management_address": "https://127.0.0.1:0",
         "metrics_address": "https://127.0.0.1:0"}


def self_signed(directory: Path, name: str) -> tuple[Path, Path, rsa.RSAPrivateKey, x509.Certificate]:
    """An RSA key (TorchServe reads RSA keys) and a certificate for 127.0.0.1, as PEM files."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_file, certificate_file = directory / f"{name}.key", directory / f"{name}.pem"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    certificate_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return key_file, certificate_file, key, certificate


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("tls")
    key_file, certificate_file, key, certificate = self_signed(directory, "server")
    keystore = directory / "keystore.p12"
    keystore.write_bytes(pkcs12.serialize_key_and_certificates(
        b"ts", key, certificate, None, serialization.BestAvailableEncryption(KEYSTORE_PASS.encode())))
    other_key, _, _, _ = self_signed(directory, "other")
    return {"key": key_file, "certificate": certificate_file, "keystore": keystore, "other_key": other_key}


def trusting(certificate: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certificate))


def plain_http_answer(port: int) -> bytes:
    """What a plain HTTP request to `port` gets back before the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
        return received


@pytest.mark.parametrize("frontends", [1, 2])
def test_an_https_inference_address_is_served_over_tls(tmp_path, model_store, tls, frontends):
    server = start_server(tmp_path, model_store, ["echo=echo.mar"], default_workers_per_model=1,
                          frontend_processes=frontends, private_key_file=tls["key"],
                          certificate_file=tls["certificate"], **HTTPS)
    try:
        url = f"https://127.0.0.1:{server.inference_port}"
        with httpx.Client(base_url=url, verify=trusting(tls["certificate"]), timeout=TIMEOUT) as client:
            assert client.get("/ping").json() == {"status": "Healthy"}
            for n in range(4):  # over new connections too, which may reach either frontend
                answer = client.post("/predictions/echo", content=f"secret {n}".encode(),
                                     headers={"Connection": "close"})
                assert answer.content == f"secret {n}".encode()
        assert not plain_http_answer(server.inference_port).startswith(b"HTTP/")
    finally:
        server.stop()


def test_management_and_metrics_listeners_are_served_over_tls(tmp_path, model_store, tls):
    server = start_server(tmp_path, model_store, ["echo=echo.mar"], default_workers_per_model=1,
                          private_key_file=tls["key"], certificate_file=tls["certificate"], **HTTPS)
    try:
        verify = trusting(tls["certificate"])
        models = httpx.get(f"https://127.0.0.1:{server.management_port}/models", verify=verify,
                           timeout=TIMEOUT)
        assert [model["modelName"] for model in models.json()["models"]] == ["echo"]
        metrics = httpx.get(f"https://127.0.0.1:{server.metrics_port}/metrics", verify=verify,
                            timeout=TIMEOUT)
        assert metrics.status_code == 200
        for port in (server.management_port, server.metrics_port):
            assert not plain_http_answer(port).startswith(b"HTTP/")
    finally:
        server.stop()


def test_a_pkcs12_keystore_serves_tls(tmp_path, model_store, tls):
    server = start_server(tmp_path, model_store, ["echo=echo.mar"], default_workers_per_model=1,
                          keystore=tls["keystore"], keystore_pass=KEYSTORE_PASS, keystore_type="PKCS12",
                          inference_address="https://127.0.0.1:0")
    try:
        answer = httpx.post(f"https://127.0.0.1:{server.inference_port}/predictions/echo",
                            content=b"from the keystore", verify=trusting(tls["certificate"]),
                            timeout=TIMEOUT)
        assert answer.content == b"from the keystore"
    finally:
        server.stop()


def start_refused(tmp_path: Path, model_store: Path, **config) -> tuple[int, str]:
    """`pyserve start --foreground`, expected to fail: (exit code, its report)."""
    config_file = tmp_path / "config.properties"
    write_loopback_config(config_file, **config)
    with open(tmp_path / "server.log", "wb") as log:
        process, report = spawn_server(["--model-store", str(model_store), "--ts-config", str(config_file)],
                                       log=log, env=dict(os.environ, TMPDIR=str(tmp_path)), cwd=tmp_path)
    try:
        code = process.wait(TIMEOUT)
    finally:
        if process.poll() is None:  # it started after all: not this test's to keep
            process.kill()
            process.wait()
    return code, report


@pytest.mark.parametrize("config, named", [
    ({}, "private_key_file and certificate_file"),
    ({"certificate_file": "{certificate}"}, "private_key_file"),
    ({"private_key_file": "{key}", "certificate_file": "{missing}"}, "cannot read certificate_file"),
    ({"private_key_file": "{other_key}", "certificate_file": "{certificate}"}, "private key"),
    ({"keystore": "{keystore}", "keystore_pass": "wrong"}, "keystore_pass is wrong"),
    ({"keystore": "{keystore}", "keystore_type": "JKS"}, "PKCS12"),
    ({"frontend_processes": "2"}, "private_key_file and certificate_file"),
], ids=["no-certificate", "certificate-alone", "unreadable-file", "key-not-the-certificate's",
        "wrong-keystore-pass", "jks-keystore", "two-frontends"])
def test_an_https_address_that_cannot_have_tls_stops_the_start(tmp_path, model_store, tls, config, named):
    files = {name: str(path) for name, path in tls.items()} | {"missing": str(tmp_path / "missing.pem")}
    config = {key: value.format(**files) for key, value in config.items()}
    code, report = start_refused(tmp_path, model_store, inference_address="https://127.0.0.1:0", **config)
    assert code != 0
    assert report.startswith("error: ") and "TLS" in report and named in report, report


def test_pyserve_start_says_why_it_cannot_serve_tls_and_exits_non_zero(tmp_path, model_store):
    config_file = tmp_path / "config.properties"
    write_loopback_config(config_file, inference_address="https://127.0.0.1:0")
    command = [sys.executable, "-m", "pyserve"]
    env = dict(os.environ, TMPDIR=str(tmp_path))
    try:
        started = subprocess.run([*command, "start", "--model-store", str(model_store), "--ts-config",
                                  str(config_file)], check=False, capture_output=True, text=True, env=env,
                                 cwd=tmp_path, timeout=120)
    finally:
        subprocess.run([*command, "stop"], check=False, capture_output=True, env=env, cwd=tmp_path, timeout=120)
    assert started.returncode != 0
    assert "https://127.0.0.1:0" in started.stderr and "private_key_file" in started.stderr, started.stderr
