"""Reading archives: every format torch-model-archiver writes, and nothing written outside."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest

from pyserve import archive

MANIFEST = json.dumps({"runtime": "python", "model": {"modelName": "m", "handler": "h.py"}})


def make_zip(path: Path, entries: dict[str, bytes], symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zip:
        for name, data in entries.items():
            zip.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)  # a symbolic link
            zip.writestr(info, target)
    return path


def make_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def tar_file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def test_a_mar_zip_is_unpacked_with_its_manifest(tmp_path):
    source = make_zip(tmp_path / "m.mar", {"h.py": b"x", archive.MANIFEST_PATH: MANIFEST.encode()})
    model_dir = archive.extract(source, tmp_path / "out")
    assert (model_dir / "h.py").read_bytes() == b"x"
    assert archive.read_manifest(model_dir)["model"]["modelName"] == "m"


def test_a_tgz_is_unpacked_without_its_top_folder(tmp_path):
    source = make_tar(tmp_path / "m.tar.gz", [(tar_file("m/h.py"), b"x"),
                                              (tar_file(f"m/{archive.MANIFEST_PATH}"), MANIFEST.encode())])
    model_dir = archive.extract(source, tmp_path / "out")
    assert (model_dir / "h.py").read_bytes() == b"x"
    assert (model_dir / archive.MANIFEST_PATH).is_file()


def test_a_folder_is_used_where_it_is(tmp_path):
    (tmp_path / "m" / "MAR-INF").mkdir(parents=True)
    (tmp_path / "m" / archive.MANIFEST_PATH).write_text(MANIFEST)
    assert archive.extract(tmp_path / "m", tmp_path / "unused") == tmp_path / "m"
    assert not (tmp_path / "unused").exists()


def test_a_folder_holding_one_model_folder_is_stepped_into(tmp_path):
    (tmp_path / "outer" / "inner").mkdir(parents=True)
    assert archive.extract(tmp_path / "outer", tmp_path / "unused") == tmp_path / "outer" / "inner"


def test_an_archive_without_manifest_gets_an_empty_default(tmp_path):
    model_dir = archive.extract(make_zip(tmp_path / "m.mar", {"h.py": b"x"}), tmp_path / "out")
    assert archive.read_manifest(model_dir) == {"runtime": "python", "model": {}}


def test_a_manifest_that_is_not_an_object_is_refused(tmp_path):
    source = make_zip(tmp_path / "m.mar", {archive.MANIFEST_PATH: b"[1, 2]"})
    model_dir = archive.extract(source, tmp_path / "out")
    with pytest.raises(archive.ArchiveError, match="not a JSON object"):
        archive.read_manifest(model_dir)


@pytest.mark.parametrize("name", ["../evil.py", "a/../../evil.py", "/tmp/evil.py", "C:/evil.py"])
def test_zip_entries_that_escape_the_folder_are_refused(tmp_path, name):
    source = make_zip(tmp_path / "bad.mar", {"ok.py": b"x", name: b"owned"})
    with pytest.raises(archive.ArchiveError, match="outside the model folder"):
        archive.extract(source, tmp_path / "out")
    assert not (tmp_path / "evil.py").exists()
    assert not (tmp_path / "out").exists()  # nothing half-unpacked is left behind


def test_zip_symlinks_are_refused(tmp_path):
    source = make_zip(tmp_path / "bad.mar", {"ok.py": b"x"}, symlinks={"link": "/etc/passwd"})
    with pytest.raises(archive.ArchiveError, match="symbolic link"):
        archive.extract(source, tmp_path / "out")


@pytest.mark.parametrize("name", ["m/../../evil.py", "/tmp/evil.py"])
def test_tar_entries_that_escape_the_folder_are_refused(tmp_path, name):
    source = make_tar(tmp_path / "bad.tar.gz", [(tar_file("m/ok.py"), b"x"), (tar_file(name), b"owned")])
    with pytest.raises(archive.ArchiveError, match="outside the model folder"):
        archive.extract(source, tmp_path / "out")
    assert not (tmp_path / "evil.py").exists()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE])
def test_tar_links_and_devices_are_refused(tmp_path, kind):
    link = tar_file("m/link")
    link.type = kind
    link.linkname = "/etc/passwd"
    source = make_tar(tmp_path / "bad.tar.gz", [(tar_file("m/ok.py"), b"x"), (link, None)])
    with pytest.raises(archive.ArchiveError, match="not a plain file"):
        archive.extract(source, tmp_path / "out")


def test_a_file_that_is_no_archive_is_refused_clearly(tmp_path):
    source = tmp_path / "m.mar"
    source.write_bytes(b"definitely not a zip")
    with pytest.raises(archive.ArchiveError, match="neither a zip"):
        archive.extract(source, tmp_path / "out")


def test_a_truncated_zip_is_refused_clearly(tmp_path):
    whole = make_zip(tmp_path / "m.mar", {"h.py": b"x" * 10_000}).read_bytes()
    (tmp_path / "cut.mar").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(archive.ArchiveError):
        archive.extract(tmp_path / "cut.mar", tmp_path / "out")


@pytest.mark.parametrize("source, name", [
    ("echo.mar", "echo"), ("models/echo.tar.gz", "echo"), ("store/echo/", "echo"), ("x.model", "x"),
])
def test_default_model_name_drops_folder_and_suffix(source, name):
    assert archive.default_model_name(source) == name
