"""`pyserve archive` writes what torch-model-archiver writes, for the same inputs and flags."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

FORMATS = ["default", "zip-store", "tgz", "no-archive"]


@pytest.fixture
def inputs(tmp_path) -> dict[str, Path]:
    src = tmp_path / "src"
    (src / "extra_dir" / "nested").mkdir(parents=True)
    (src / "extra_dir" / "__pycache__").mkdir()
    (src / "extra_dir" / ".hidden").mkdir()
    files = {
        "handler": src / "my_handler.py",
        "model_file": src / "model.py",
        "serialized": src / "weights.pt",
        "single_extra": src / "index_to_name.json",
        "requirements": src / "requirements.txt",
        "config": src / "model-config.yaml",
    }
    files["handler"].write_text("def handle(data, context):\n    return data\n")
    files["model_file"].write_text("import torch\nclass M(torch.nn.Module):\n    pass\n")
    files["serialized"].write_bytes(bytes(range(256)) * 8)
    files["single_extra"].write_text('{"0": "cat"}')
    files["requirements"].write_text("numpy\n")
    files["config"].write_text("batchSize: 2\n")
    (src / "extra_dir" / "vocab.txt").write_text("a b c")
    (src / "extra_dir" / "nested" / "deep.txt").write_text("deep")
    (src / "extra_dir" / "__pycache__" / "x.pyc").write_bytes(b"\0")
    (src / "extra_dir" / ".hidden" / "secret").write_text("s")
    (src / "glob_a.txt").write_text("a")
    (src / "glob_b.txt").write_text("b")
    files["src"] = src
    return files


def flags(inputs: dict[str, Path], archive_format: str, export: Path) -> list[str]:
    src = inputs["src"]
    return [
        "--model-name", "mymodel", "--version", "2.5",
        "--handler", str(inputs["handler"]),
        "--model-file", str(inputs["model_file"]),
        "--serialized-file", str(inputs["serialized"]),
        "--extra-files", f"{inputs['single_extra']},{src / 'extra_dir'},{src / 'glob_*.txt'}",
        "--requirements-file", str(inputs["requirements"]),
        "--config-file", str(inputs["config"]),
        "--archive-format", archive_format,
        "--export-path", str(export),
    ]


def contents(path: Path) -> dict[str, bytes]:
    """Every file of an archive of any format, by name relative to the model root."""
    if path.is_dir():
        return {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zip:
            return {name: zip.read(name) for name in zip.namelist() if not name.endswith("/")}
    with tarfile.open(path) as tar:
        return {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def build_both(inputs, tmp_path, archive_format, suffix) -> tuple[Path, Path]:
    theirs, ours = tmp_path / "theirs", tmp_path / "ours"
    theirs.mkdir()
    ours.mkdir()
    subprocess.run(["torch-model-archiver", *flags(inputs, archive_format, theirs)],
                   check=True, capture_output=True, cwd=tmp_path)
    subprocess.run([sys.executable, "-P", "-m", "pyserve", "archive",
                    *flags(inputs, archive_format, ours)], check=True, capture_output=True, cwd=tmp_path)
    return theirs / f"mymodel{suffix}", ours / f"mymodel{suffix}"


@pytest.mark.parametrize("archive_format, suffix", [
    ("default", ".mar"), ("zip-store", ".mar"), ("tgz", ".tar.gz"), ("no-archive", ""),
])
def test_same_files_with_the_same_bytes_as_torch_model_archiver(inputs, tmp_path, archive_format, suffix):
    theirs, ours = build_both(inputs, tmp_path, archive_format, suffix)
    theirs_files, ours_files = contents(theirs), contents(ours)
    manifest = "MAR-INF/MANIFEST.json"
    assert sorted(ours_files) == sorted(theirs_files)
    for name in theirs_files:
        if name != manifest:
            assert ours_files[name] == theirs_files[name], name


@pytest.mark.parametrize("archive_format, suffix", [
    ("default", ".mar"), ("zip-store", ".mar"), ("tgz", ".tar.gz"), ("no-archive", ""),
])
def test_same_manifest_as_torch_model_archiver_but_for_the_date(inputs, tmp_path, archive_format, suffix):
    theirs, ours = build_both(inputs, tmp_path, archive_format, suffix)
    theirs_text = contents(theirs)["MAR-INF/MANIFEST.json"].decode()
    ours_text = contents(ours)["MAR-INF/MANIFEST.json"].decode()
    theirs_manifest, ours_manifest = json.loads(theirs_text), json.loads(ours_text)
    assert theirs_manifest.pop("createdOn") and ours_manifest.pop("createdOn")
    assert ours_manifest == theirs_manifest
    assert list(json.loads(ours_text)) == list(json.loads(theirs_text))  # key order too


def test_zip_store_stores_and_default_deflates_like_torch_model_archiver(inputs, tmp_path):
    for archive_format, method in (("zip-store", zipfile.ZIP_STORED), ("default", zipfile.ZIP_DEFLATED)):
        work = tmp_path / archive_format
        work.mkdir()
        theirs, ours = build_both(inputs, work, archive_format, ".mar")
        for path in (theirs, ours):
            with zipfile.ZipFile(path) as zip:
                data_methods = {i.compress_type for i in zip.infolist() if not i.filename.startswith("MAR")}
            assert data_methods == {method}


def archive(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-P", "-m", "pyserve", "archive", *args],
                          capture_output=True, text=True, cwd=cwd)


def test_a_builtin_handler_name_is_recorded_and_no_file_copied(tmp_path):
    done = archive("--model-name", "cls", "--version", "1.0", "--handler", "image_classifier",
                   "--export-path", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    files = contents(tmp_path / "cls.mar")
    assert list(files) == ["MAR-INF/MANIFEST.json"]
    assert json.loads(files["MAR-INF/MANIFEST.json"])["model"]["handler"] == "image_classifier"


def test_module_colon_function_copies_the_module(inputs, tmp_path):
    handler = str(inputs["handler"]).removesuffix(".py") + ":handle"
    done = archive("--model-name", "fn", "--version", "1.0", "--handler", handler,
                   "--export-path", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    files = contents(tmp_path / "fn.mar")
    assert "my_handler.py" in files
    assert json.loads(files["MAR-INF/MANIFEST.json"])["model"]["handler"] == "my_handler:handle"


def test_an_existing_archive_is_kept_without_force(inputs, tmp_path):
    args = ["--model-name", "m", "--version", "1", "--handler", str(inputs["handler"]),
            "--export-path", str(tmp_path)]
    assert archive(*args, cwd=tmp_path).returncode == 0
    again = archive(*args, cwd=tmp_path)
    assert again.returncode == 1
    assert "already exists" in again.stderr
    assert archive(*args, "--force", cwd=tmp_path).returncode == 0


def test_a_model_name_with_special_characters_is_refused(inputs, tmp_path):
    done = archive("--model-name", "bad/name", "--version", "1", "--handler", str(inputs["handler"]),
                   "--export-path", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 1
    assert "special characters" in done.stderr


def test_a_missing_input_file_is_named(inputs, tmp_path):
    done = archive("--model-name", "m", "--version", "1", "--handler", str(inputs["handler"]),
                   "--serialized-file", "nope.pt", "--export-path", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 1
    assert "nope.pt" in done.stderr
