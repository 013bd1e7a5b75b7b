"""Model archives: the .mar zip, the tgz variant and plain folders, as torch-model-archiver writes them.

Extraction refuses any entry that would land outside the target folder (absolute paths,
``..``, links): TorchServe shipped path-traversal bugs here, and an archive is input
from whoever could place a file in the model store.

An archive is read as untrusted bytes: whatever is wrong with it ends in ArchiveError
with the reason, and nothing of it is left in the target folder. Before anything is
written, the sizes its entries declare are added up; an archive that would unpack to
more than ``max_bytes`` (by default nine tenths of the free space on the target's
disk) or that has more than MAX_ENTRIES entries is refused, so that a zip bomb cannot
fill the disk. The zip and tar readers never write more than an entry declares. A tar
header that declares a longer pax or GNU long-name record than MAX_HEADER_BYTES is
refused too, where tarfile would try to allocate whatever the header says.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

MANIFEST_PATH = "MAR-INF/MANIFEST.json"
MAX_ENTRIES = 100_000
MAX_HEADER_BYTES = 16 << 20
MAX_MANIFEST_BYTES = 1 << 20
ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate",
               zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "lzma"}


class ArchiveError(Exception):
    """The archive cannot be used; the message says why."""


def _check_member(name: str) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise ArchiveError(f"archive entry {name!r} would be written outside the model folder")
    return path


class _Budget:
    """Counts entries and declared bytes while an archive's index is read, and refuses at once
    when either runs over, before a single byte is written."""

    def __init__(self, source: Path, max_bytes: int):
        self.source = source
        self.max_bytes = max_bytes
        self.entries = 0
        self.bytes = 0

    def add(self, size: int) -> None:
        self.entries += 1
        self.bytes += size
        if self.entries > MAX_ENTRIES:
            raise ArchiveError(f"{self.source.name} has more than {MAX_ENTRIES} entries")
        if self.bytes > self.max_bytes:
            raise ArchiveError(f"{self.source.name} would unpack to more than {self.max_bytes} bytes, "
                               "the most this server unpacks here")


def _extract_zip(source: Path, target: Path, budget: _Budget) -> None:
    with zipfile.ZipFile(source) as archive:
        for member in archive.infolist():
            _check_member(member.filename)
            if stat.S_ISLNK(member.external_attr >> 16):
                raise ArchiveError(f"archive entry {member.filename!r} is a symbolic link")
            if member.flag_bits & 0x1:
                raise ArchiveError(f"archive entry {member.filename!r} is encrypted")
            if member.compress_type not in ZIP_METHODS:
                raise ArchiveError(f"archive entry {member.filename!r} uses compression method "
                                   f"{member.compress_type}; only {', '.join(ZIP_METHODS.values())} are read")
            budget.add(member.file_size)
        archive.extractall(target)


class _BoundedReads:
    """A tar stream on which no single read may ask for more than MAX_HEADER_BYTES.

    tarfile reads a pax or GNU long-name record with one read() of the size its header
    declares, which allocates that size first: a forged header is a MemoryError or
    gigabytes of memory. Entry data is read in small chunks and never comes near the limit.
    """

    def __init__(self, raw):
        self._raw = raw

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > MAX_HEADER_BYTES:
            raise ArchiveError(f"a tar header declares a record of {size} bytes, "
                               f"more than the {MAX_HEADER_BYTES} allowed")
        return self._raw.read(size)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def close(self) -> None:
        self._raw.close()


def _open_tar_stream(source: Path):
    """The archive's bytes, decompressed as tarfile.open("r:*") would."""
    with open(source, "rb") as file:
        magic = file.read(6)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.open(source, "rb")
    if magic.startswith(b"BZh"):
        return bz2.open(source, "rb")
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.open(source, "rb")
    return open(source, "rb")


def _extract_tar(source: Path, target: Path, budget: _Budget) -> None:
    """Unpacks a tgz, dropping the top folder torch-model-archiver puts everything under."""
    with _open_tar_stream(source) as raw:
        stream = _BoundedReads(raw)
        try:
            archive = tarfile.open(fileobj=stream, mode="r:")  # noqa: SIM115 - closed below
        except tarfile.ReadError:
            raise ArchiveError(f"{source.name} is neither a zip (.mar) nor a tar.gz archive") from None
        with archive:
            members = []
            # One header at a time: the budget stops the scan before it reads past an entry
            # too large to unpack, however much data the entry declares.
            for member in archive:
                _check_member(member.name)
                if not (member.isfile() or member.isdir()):
                    raise ArchiveError(f"archive entry {member.name!r} is not a plain file or folder")
                if member.size < 0:
                    raise ArchiveError(f"archive entry {member.name!r} declares a negative size")
                budget.add(member.size if member.isfile() else 0)
                members.append(member)
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


def _room_on_disk(folder: Path) -> int:
    """Nine tenths of the free space where `folder` lies: unpacking never fills a disk."""
    return shutil.disk_usage(folder).free * 9 // 10


def extract(source: Path, target: Path, max_bytes: int | None = None) -> Path:
    """Makes `source` (a .mar, a tgz or a folder) available as a model folder.

    Archives are unpacked into `target`, which must not exist yet; a folder is used
    where it is. Returns the model folder. ArchiveError for an archive that is damaged,
    unsafe or too large (more than `max_bytes` once unpacked; default: nine tenths of the
    free space on the target's disk), and then `target` does not exist.
    """
    source = Path(source)
    if source.is_dir():
        return _single_subfolder(source)
    if not source.is_file():
        raise ArchiveError(f"Model not found at: {source}")
    target = Path(target)
    target.mkdir(parents=True)
    try:
        budget = _Budget(source, _room_on_disk(target) if max_bytes is None else max_bytes)
        if zipfile.is_zipfile(source):
            _extract_zip(source, target, budget)
        else:
            _extract_tar(source, target, budget)
    except BaseException as error:
        shutil.rmtree(target, ignore_errors=True)
        if isinstance(error, ArchiveError) or not isinstance(error, Exception):
            raise
        # zipfile, tarfile and their decompressors raise many types for damaged input
        # (BadZipFile, TarError, OSError, EOFError, zlib.error, NotImplementedError,
        # UnicodeDecodeError for a name, ...): all of them mean the archive is unusable.
        reason = str(error) or type(error).__name__
        raise ArchiveError(f"cannot unpack {source.name}: {reason}") from error
    return target


def _single_subfolder(folder: Path) -> Path:
    """A folder without a manifest that holds one sub-folder is that sub-folder (as TorchServe)."""
    if (folder / MANIFEST_PATH).is_file():
        return folder
    entries = [entry for entry in folder.iterdir() if not entry.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return folder


# Manifest fields that are strings in TorchServe's Manifest class.
MANIFEST_TEXT_FIELDS = ("createdOn", "runtime", "archiverVersion")
MODEL_TEXT_FIELDS = ("modelName", "modelVersion", "description", "handler", "serializedFile",
                     "modelFile", "extensions", "requirementsFile", "configFile", "envelope")


def _text_fields(fields: dict, names: tuple[str, ...], where: str) -> None:
    """Numbers and booleans become their text, as TorchServe's JSON reader makes them; an
    array or object where a string belongs is refused."""
    for name in names:
        value = fields.get(name)
        if value is None or isinstance(value, str):
            continue
        if isinstance(value, bool):
            fields[name] = "true" if value else "false"
        elif isinstance(value, (int, float)):
            fields[name] = str(value)
        else:
            raise ArchiveError(f"{MANIFEST_PATH}: {where}{name} must be a string, "
                               f"not {'an array' if isinstance(value, list) else 'an object'}")


def read_manifest(model_dir: Path) -> dict:
    """The parsed MANIFEST.json; an archive without one gets an empty default, as in TorchServe."""
    path = Path(model_dir) / MANIFEST_PATH
    if not path.is_file():
        return {"runtime": "python", "model": {}}
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ArchiveError(f"{MANIFEST_PATH} is larger than {MAX_MANIFEST_BYTES} bytes")
        manifest = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError, RecursionError) as error:
        # ValueError: not JSON, not UTF-8, an integer too long; RecursionError: nested too deep.
        raise ArchiveError(f"cannot read {MANIFEST_PATH}: {error}") from error
    if not isinstance(manifest, dict) or not isinstance(manifest.get("model", {}), dict):
        raise ArchiveError(f"{MANIFEST_PATH} is not a JSON object with a 'model' object")
    manifest.setdefault("model", {})
    _text_fields(manifest, MANIFEST_TEXT_FIELDS, "")
    _text_fields(manifest["model"], MODEL_TEXT_FIELDS, "model.")
    manifest.setdefault("runtime", "python")
    return manifest


def remove_extracted(model_dir: Path, extracted_root: Path) -> None:
    """Deletes an extracted model folder, but never a user's folder outside `extracted_root`."""
    model_dir = Path(model_dir).resolve()
    root = Path(extracted_root).resolve()
    if root in model_dir.parents:
        shutil.rmtree(model_dir, ignore_errors=True)


# What an archive's file name ends with; a model store lists these (and folders) as models.
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".mar", ".model", ".zip")


def default_model_name(source: str) -> str:
    """`echo.mar` or `echo.tar.gz` or `models/echo` -> `echo`."""
    name = os.path.basename(str(source).rstrip("/"))
    for suffix in ARCHIVE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name
