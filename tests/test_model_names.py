"""One model-name rule (torch-model-archiver's characters, at most 255 of them) for the
management API, archive manifests and the command line; names and URLs never forge log lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest

from helpers import EXAMPLES, archive_model, start_server
from pyserve.control import write_loopback_config
from pyserve.names import InvalidModelName, check_model_name

BAD_NAMES = {"slash": "a/b", "256 characters": "x" * 256, "newline": "evil\nname",
             "leading dot": ".hidden", "leading dash": "-dash", "space": "a b",
             "not ascii": "\u00fcn\u00ef", "empty": ""}


@pytest.mark.parametrize("name", ["echo", "5", "resnet-18.v2_final", "x" * 255],
                         ids=["echo", "5", "resnet-18.v2_final", "255 characters"])
def test_a_name_of_letters_digits_dash_dot_and_underscore_is_a_model_name(name):
    assert check_model_name(name) == name


@pytest.mark.parametrize("name", [*BAD_NAMES.values(), 5, None], ids=[*BAD_NAMES, "5", "None"])
def test_any_other_name_is_refused_saying_the_rule(name):
    with pytest.raises(InvalidModelName) as refused:
        check_model_name(name)
    assert refused.value.code == 400
    assert "starts with a letter or a digit" in refused.value.message


def test_a_refused_name_is_shown_short_and_on_one_line():
    with pytest.raises(InvalidModelName) as refused:
        check_model_name("evil\n" + "x" * (1 << 20))
    assert "\n" not in refused.value.message and len(refused.value.message) < 400


def with_manifest_name(archive: Path, name: str, target: Path) -> Path:
    """A copy of a torch-model-archiver archive whose manifest says modelName `name`."""
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(target, "w") as copy:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "MAR-INF/MANIFEST.json":
                manifest = json.loads(data)
                manifest["model"]["modelName"] = name
                data = json.dumps(manifest).encode()
            copy.writestr(item, data)
    return target


MANIFEST_NAMES = {"slash": "a/b", "long": "x" * 1000, "huge": "x" * (1 << 20),
                  "newline": "evil\nname"}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("names_store")
    echo = archive_model(store, "echo", EXAMPLES / "echo" / "echo_handler.py")
    for label, name in MANIFEST_NAMES.items():
        with_manifest_name(echo, name, store / f"{label}.mar")
    return store


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("names"), store, ["echo=echo.mar"],
                          enable_model_api="true", default_workers_per_model=1)
    yield server
    server.stop()


@pytest.fixture
def manage(server):
    with httpx.Client(base_url=server.management_url, timeout=60) as client:
        yield client


def model_names(manage) -> list[str]:
    return [model["modelName"] for model in manage.get("/models").json()["models"]]


@pytest.mark.parametrize("name", [name for name in BAD_NAMES.values() if name],
                         ids=[label for label, name in BAD_NAMES.items() if name])
def test_register_with_a_model_name_outside_the_rule_is_400(manage, name):
    response = manage.post("/models", json={"url": "echo.mar", "model_name": name,
                                            "initial_workers": 0})
    assert response.status_code == 400, response.text
    assert response.json()["type"] == "BadRequestException"
    assert response.json()["message"].startswith("Invalid model name")
    assert model_names(manage) == ["echo"]


def test_a_megabyte_model_name_is_400(manage):
    response = manage.post("/models", json={"url": "echo.mar", "model_name": "x" * (1 << 20)})
    assert response.status_code == 400
    assert len(response.content) < 1000
    assert model_names(manage) == ["echo"]


@pytest.mark.parametrize("label", sorted(MANIFEST_NAMES))
def test_an_archive_whose_manifest_name_is_outside_the_rule_is_refused_with_400(manage, label):
    # Such a model used to be registered: one nobody could reach or delete.
    response = manage.post("/models", params={"url": f"{label}.mar", "initial_workers": "0"})
    assert response.status_code == 400, response.text
    assert response.json()["type"] == "BadRequestException"
    assert model_names(manage) == ["echo"]


def test_a_model_name_outside_the_rule_on_the_command_line_is_a_startup_error(store, tmp_path):
    config = tmp_path / "config.properties"
    write_loopback_config(config)
    started = subprocess.run(
        [sys.executable, "-P", "-m", "pyserve", "start", "--foreground", "--model-store", str(store),
         "--ts-config", str(config), "--models", "a/b=echo.mar"],
        env=dict(os.environ, TMPDIR=str(tmp_path)), cwd=tmp_path, capture_output=True, text=True,
        timeout=120)
    assert started.returncode == 2
    assert started.stderr.startswith("pyserve: Invalid model name 'a/b'")


def test_a_newline_in_a_logged_url_does_not_start_a_log_line(store, tmp_path):
    server = start_server(tmp_path, store, ["echo=echo.mar", "missing\nFORGED ERROR.mar"])
    try:
        log = server.log()
    finally:
        server.stop()
    assert "missing\\nFORGED ERROR.mar" in log
    assert not any(line.startswith("FORGED") for line in log.splitlines())
