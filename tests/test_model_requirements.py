"""A model's requirements file: installed only when install_py_dep_per_model is on.

The dependency is a wheel the test builds itself, so pip needs no network.
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

import httpx
import pytest

from helpers import HANDLERS, archive_model, start_server


def build_wheel(folder: Path) -> Path:
    files = {
        "pyserve_test_dependency/__init__.py": b'MESSAGE = "installed from requirements"\n',
        "pyserve_test_dependency-1.0.dist-info/METADATA":
            b"Metadata-Version: 2.1\nName: pyserve-test-dependency\nVersion: 1.0\n",
        "pyserve_test_dependency-1.0.dist-info/WHEEL":
            b"Wheel-Version: 1.0\nGenerator: pyserve-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append("pyserve_test_dependency-1.0.dist-info/RECORD,,")
    wheel = folder / "pyserve_test_dependency-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zip:
        for name, data in files.items():
            zip.writestr(name, data)
        zip.writestr("pyserve_test_dependency-1.0.dist-info/RECORD", "\n".join(record) + "\n")
    return wheel


@pytest.fixture
def store(tmp_path) -> Path:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"{build_wheel(tmp_path)}\n")
    store = tmp_path / "store"
    archive_model(store, "dep", HANDLERS / "needs_dependency.py",
                  extra=["--requirements-file", str(requirements)])
    return store


def test_requirements_are_installed_when_allowed(store, tmp_path):
    server = start_server(tmp_path, store, ["dep=dep.mar"], default_workers_per_model=1,
                          install_py_dep_per_model="true")
    try:
        answer = httpx.post(f"{server.inference_url}/predictions/dep", content=b"x", timeout=30)
    finally:
        server.stop()
    assert answer.text == "installed from requirements"


def test_requirements_are_ignored_by_default(store, tmp_path):
    server = start_server(tmp_path, store, ["dep=dep.mar"], default_workers_per_model=1)
    try:
        log = server.log()
    finally:
        server.stop()
    assert "No module named 'pyserve_test_dependency'" in log


def test_a_failed_install_is_reported_and_the_model_not_served(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"{tmp_path / 'missing-1.0-py3-none-any.whl'}\n")
    store = tmp_path / "store"
    archive_model(store, "dep", HANDLERS / "needs_dependency.py",
                  extra=["--requirements-file", str(requirements)])
    server = start_server(tmp_path, store, ["dep=dep.mar"], default_workers_per_model=1,
                          install_py_dep_per_model="true")
    try:
        answer = httpx.post(f"{server.inference_url}/predictions/dep", content=b"x", timeout=30)
        log = server.log()
    finally:
        server.stop()
    assert "Custom pip package installation failed for model dep" in log
    assert answer.status_code == 404
