"""Model archives: the .mar zip, the tgz variant and plain folders, as torch-model-archiver writes them.

Extraction refuses any entry that would land outside the target folder (absolute paths,
``..``, links): TorchServe shipped path-traversal bugs here, and an archive is input
from whoever could place a file in the model store.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

MANIFEST_PATH = "MAR-INF/MANIFEST.json"


class ArchiveError(Exception):
    """The archive cannot be used; the message says why."""


def _check_member(name: str) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise ArchiveError(f"archive entry {name!r} would be written outside the model folder")
    return path


def _extract_zip(source: Path, target: Path) -> None:
    with zipfile.ZipFile(source) as archive:
        for member in archive.infolist():
            _check_member(member.filename)
            if stat.S_ISLNK(member.external_attr >> 16):
                raise ArchiveError(f"archive entry {member.filename!r} is a symbolic link")
        archive.extractall(target)


def _extract_tar(source: Path, target: Path) -> None:
    """Unpacks a tgz, dropping the top folder torch-model-archiver puts everything under."""
    with tarfile.open(source) as archive:
        members = archive.getmembers()
        for member in members:
            _check_member(member.name)
            if not (member.isfile() or member.isdir()):
                raise ArchiveError(f"archive entry {member.name!r} is not a plain file or folder")
        tops = {PurePosixPath(m.name).parts[0] for m in members if PurePosixPath(m.name).parts}
        strip = len(tops) == 1 and any(len(PurePosixPath(m.name).parts) > 1 for m in members)
        for member in members:
            parts = PurePosixPath(member.name).parts
            if strip:
                parts = parts[1:]
            if not parts:
                continue
            member.name = str(PurePosixPath(*parts))
            archive.extract(member, target, filter="data")


def extract(source: Path, target: Path) -> Path:
    """Makes `source` (a .mar, a tgz or a folder) available as a model folder.

    Archives are unpacked into `target`, which must not exist yet; a folder is used
    where it is. Returns the model folder.
    """
    source = Path(source)
    if source.is_dir():
        return _single_subfolder(source)
    if not source.is_file():
        raise ArchiveError(f"Model not found at: {source}")
    target.mkdir(parents=True)
    try:
        if zipfile.is_zipfile(source):
            _extract_zip(source, target)
        elif tarfile.is_tarfile(source):
            _extract_tar(source, target)
        else:
            raise ArchiveError(f"{source.name} is neither a zip (.mar) nor a tar.gz archive")
    except (ArchiveError, zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as error:
        shutil.rmtree(target, ignore_errors=True)
        if isinstance(error, ArchiveError):
            raise
        raise ArchiveError(f"cannot unpack {source.name}: {error}") from error
    return target


def _single_subfolder(folder: Path) -> Path:
    """A folder without a manifest that holds one sub-folder is that sub-folder (as TorchServe)."""
    if (folder / MANIFEST_PATH).is_file():
        return folder
    entries = [entry for entry in folder.iterdir() if not entry.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return folder


def read_manifest(model_dir: Path) -> dict:
    """The parsed MANIFEST.json; an archive without one gets an empty default, as in TorchServe."""
    path = Path(model_dir) / MANIFEST_PATH
    if not path.is_file():
        return {"runtime": "python", "model": {}}
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ArchiveError(f"cannot read {MANIFEST_PATH}: {error}") from error
    if not isinstance(manifest, dict) or not isinstance(manifest.get("model", {}), dict):
        raise ArchiveError(f"{MANIFEST_PATH} is not a JSON object with a 'model' object")
    manifest.setdefault("model", {})
    manifest.setdefault("runtime", "python")
    return manifest


def remove_extracted(model_dir: Path, extracted_root: Path) -> None:
    """Deletes an extracted model folder, but never a user's folder outside `extracted_root`."""
    model_dir = Path(model_dir).resolve()
    root = Path(extracted_root).resolve()
    if root in model_dir.parents:
        shutil.rmtree(model_dir, ignore_errors=True)


def default_model_name(source: str) -> str:
    """`echo.mar` or `echo.tar.gz` or `models/echo` -> `echo`."""
    name = os.path.basename(str(source).rstrip("/"))
    for suffix in (".tar.gz", ".tgz", ".mar", ".model", ".zip"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name
