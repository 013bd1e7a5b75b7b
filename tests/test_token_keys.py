"""Token authorization's edges: the key file is 0600 whatever was there before, and the
Authorization scheme is read in any case (RFC 7235)."""

from __future__ import annotations

import json
import os
import stat

import httpx
import pytest

from helpers import start_server


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def secured(model_store, tmp_path):
    """A server with token authorization, started where a world-readable key_file.json
    already lies."""
    old = tmp_path / "key_file.json"
    old.write_text("{}")
    old.chmod(0o644)
    server = start_server(tmp_path, model_store, ["echo=echo.mar"],
                          disable_token_authorization="false", default_workers_per_model=1)
    yield server, old
    server.stop()


def keys(key_file) -> dict:
    return {kind: entry["key"] for kind, entry in json.loads(key_file.read_text()).items()}


def test_an_existing_key_file_is_replaced_by_one_only_the_owner_reads(secured):
    _, key_file = secured
    assert mode(key_file) == 0o600
    assert set(keys(key_file)) == {"inference", "management", "API"}


def test_a_regenerated_key_file_is_only_the_owners_again(secured):
    server, key_file = secured
    key_file.chmod(0o644)
    response = httpx.get(f"{server.management_url}/token", params={"type": "inference"},
                         headers={"Authorization": f"Bearer {keys(key_file)['API']}"}, timeout=60)
    assert response.status_code == 200
    assert mode(key_file) == 0o600


def test_the_key_file_never_writes_through_a_symlink(model_store, tmp_path):
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("untouched")
    (tmp_path / "key_file.json").symlink_to(elsewhere)
    server = start_server(tmp_path, model_store, ["echo=echo.mar"],
                          disable_token_authorization="false", default_workers_per_model=1)
    try:
        assert elsewhere.read_text() == "untouched"
        assert not (tmp_path / "key_file.json").is_symlink()
    finally:
        server.stop()


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer"])
def test_the_bearer_scheme_is_read_in_any_case(secured, scheme):
    server, key_file = secured
    response = httpx.post(f"{server.inference_url}/predictions/echo", content=b"x",
                          headers={"Authorization": f"{scheme} {keys(key_file)['inference']}"},
                          timeout=60)
    assert (response.status_code, response.content) == (200, b"x")
