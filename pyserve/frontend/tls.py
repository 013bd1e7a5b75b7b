"""TLS for a listener whose address is https://, from TorchServe's keys.

TorchServe serves an https:// listener with the first private key in `keystore` and its
certificate chain (`keystore_type` PKCS12, the default; `keystore_pass`, default "changeit"),
or without a keystore with `private_key_file` and `certificate_file` (PEM). pyserve reads the
same keys; a keystore needs the `cryptography` package, since Python's ssl reads PEM only.
Where TorchServe would serve a self-signed certificate it makes up (neither is set), and where
a key cannot be used, pyserve refuses to start and says why: an https:// address is never
served as plain HTTP, nor with a certificate no client could check.
"""

from __future__ import annotations

import os
import ssl

from pyserve.config import Settings

DEFAULT_KEYSTORE_TYPE = "PKCS12"


class TlsError(Exception):
    """TLS cannot be set up; the message names the keys to look at."""


def is_https(address: str) -> bool:
    return address.strip().lower().startswith("https://")


def server_context(settings: Settings) -> ssl.SSLContext:
    """A server context with the configured key and certificate chain: TLS 1.2 or 1.3."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.keystore:
        _load_keystore(context, settings)
    elif settings.private_key_file and settings.certificate_file:
        _load_pem_files(context, settings.certificate_file, settings.private_key_file)
    elif settings.private_key_file or settings.certificate_file:
        unset = "certificate_file" if settings.private_key_file else "private_key_file"
        raise TlsError(f"private_key_file and certificate_file go together: {unset} is not set")
    else:
        raise TlsError("an https:// address needs a certificate: set private_key_file and "
                       "certificate_file (PEM), or keystore and keystore_pass (PKCS12)")
    return context


def _read(key: str, path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise TlsError(f"cannot read {key} {path}: {error.strerror}") from None


def _no_password() -> bytes:
    # Without a callback OpenSSL would ask for the passphrase of an encrypted key on the
    # terminal; TorchServe reads unencrypted keys only.
    return b""


def _load_pem_files(context: ssl.SSLContext, certificate_file: str, private_key_file: str) -> None:
    _read("certificate_file", certificate_file)
    _read("private_key_file", private_key_file)
    try:
        context.load_cert_chain(certificate_file, private_key_file, password=_no_password)
    except ssl.SSLError as error:
        raise TlsError(f"certificate_file {certificate_file} and private_key_file {private_key_file} "
                       "must hold a PEM certificate chain and its unencrypted private key "
                       f"({error.reason or error})") from None


def _load_keystore(context: ssl.SSLContext, settings: Settings) -> None:
    path = settings.keystore
    kind = (settings.keystore_type or DEFAULT_KEYSTORE_TYPE).upper()
    if kind != DEFAULT_KEYSTORE_TYPE:
        raise TlsError(f"keystore_type {settings.keystore_type} is not supported: pyserve reads "
                       "PKCS12 keystores (keytool -importkeystore -deststoretype PKCS12 converts "
                       "one), or set private_key_file and certificate_file instead")
    try:
        from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, pkcs12
    except ImportError:
        raise TlsError("keystore needs the Python package cryptography (pip install "
                       "cryptography); or set private_key_file and certificate_file instead") from None
    data = _read("keystore", path)
    password = settings.keystore_pass.encode() if settings.keystore_pass else None
    try:
        key, certificate, chain = pkcs12.load_key_and_certificates(data, password)
    except ValueError:
        raise TlsError(f"cannot open keystore {path}: keystore_pass is wrong, or the file is "
                       "not a PKCS12 keystore") from None
    if key is None or certificate is None:
        raise TlsError(f"keystore {path} holds no private key with its certificate")
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    pem += b"".join(cert.public_bytes(Encoding.PEM) for cert in (certificate, *chain))
    # ssl loads keys from files only: this one lives in memory, never on a disk
    descriptor = os.memfd_create("pyserve-keystore", os.MFD_CLOEXEC)
    try:
        os.write(descriptor, pem)
        try:
            context.load_cert_chain(f"/proc/self/fd/{descriptor}")
        except ssl.SSLError as error:
            raise TlsError(f"keystore {path}: its key and certificate cannot be used "
                           f"({error.reason or error})") from None
    finally:
        os.close(descriptor)
