"""Writes model archives exactly as torch-model-archiver 0.12.0 does: same files, same manifest.

`pyserve archive` takes torch-model-archiver's flags, so build scripts can switch tools
without changes, and archives made by either load in pyserve and in TorchServe.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from datetime import datetime
from io import BytesIO
from pathlib import Path

from pyserve.archive import MANIFEST_PATH

ARCHIVER_VERSION = "0.12.0"  # the torch-model-archiver release whose output we reproduce
FORMATS = {"default": ".mar", "zip-store": ".mar", "tgz": ".tar.gz", "no-archive": ""}
RUNTIMES = ("python", "python3", "LSP")
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-.]*$")
# Built-in handlers are resolved by the server; there is no file to copy.
BUILTIN_HANDLERS = (
    "base_handler", "text_classifier", "image_classifier", "object_detector",
    "image_segmenter", "dali_image_classifier", "vllm_handler", "trt_llm_handler",
)
SKIPPED_FOLDERS = {"__MACOSX", "__pycache__"}


class ArchiverError(Exception):
    """The inputs cannot make an archive; the message says which and why."""


@dataclass
class ArchiveSpec:
    model_name: str
    version: str
    handler: str
    serialized_file: str | None = None
    model_file: str | None = None
    extra_files: str | None = None
    runtime: str = "python"
    export_path: str = "."
    archive_format: str = "default"
    force: bool = False
    requirements_file: str | None = None
    config_file: str | None = None

    def output_path(self) -> Path:
        return Path(self.export_path) / f"{self.model_name}{FORMATS[self.archive_format]}"


def manifest_for(spec: ArchiveSpec, created_on: datetime | None = None) -> dict:
    model: dict = {"modelName": spec.model_name}
    if spec.serialized_file:
        model["serializedFile"] = os.path.basename(spec.serialized_file)
    model["handler"] = os.path.basename(spec.handler)
    if spec.model_file:
        model["modelFile"] = os.path.basename(spec.model_file)
    if spec.version:
        model["modelVersion"] = spec.version
    if spec.requirements_file:
        model["requirementsFile"] = os.path.basename(spec.requirements_file)
    if spec.config_file:
        model["configFile"] = os.path.basename(spec.config_file)
    return {
        "createdOn": (created_on or datetime.now()).strftime("%d/%m/%Y %H:%M:%S"),
        "runtime": spec.runtime,
        "model": model,
        "archiverVersion": ARCHIVER_VERSION,
    }


def _handler_file(handler: str) -> str | None:
    """`h.py`, `h`, `h:fn` or `dir/h.py:fn` -> the file to copy; None for built-ins."""
    if handler in BUILTIN_HANDLERS:
        return None
    path = handler.split(":", 1)[0]
    return path if path.endswith(".py") else path + ".py"


def _copy_extra_files(extra_files: str, staging: Path) -> None:
    for pattern in (item.strip() for item in extra_files.split(",")):
        if not pattern:
            continue
        is_glob = any(char in pattern for char in "*?") or ("[" in pattern and "]" in pattern)
        if not is_glob and not Path(pattern).exists():
            raise ArchiverError(f"File does not exist: {pattern}")
        for match in map(Path, glob.glob(pattern)):
            if match.is_file():
                shutil.copy2(match, staging)
            elif match.is_dir():
                # A folder's contents land in the archive root, as torch-model-archiver does.
                for item in match.iterdir():
                    if item.is_file():
                        shutil.copy2(item, staging / item.name)
                    elif item.is_dir():
                        shutil.copytree(item, staging / item.name, dirs_exist_ok=True)


def _stage(spec: ArchiveSpec, staging: Path) -> None:
    handler_file = _handler_file(spec.handler) if spec.runtime != "LSP" else None
    for path in (spec.model_file, spec.serialized_file, handler_file,
                 spec.requirements_file, spec.config_file):
        if path:
            if not Path(path).is_file():
                raise ArchiverError(f"File does not exist: {path}")
            shutil.copy(path, staging)
    if spec.extra_files:
        _copy_extra_files(spec.extra_files, staging)


def _walk(staging: Path):
    """Files to archive, relative to `staging`, skipping hidden and cache folders."""
    for root, folders, files in os.walk(staging):
        folders[:] = sorted(f for f in folders if f not in SKIPPED_FOLDERS and not f.startswith("."))
        for name in sorted(files):
            path = Path(root) / name
            yield path, path.relative_to(staging).as_posix()


def _write(spec: ArchiveSpec, staging: Path, manifest: str, output: Path) -> None:
    if spec.archive_format == "tgz":
        with tarfile.open(output, "w:gz") as tar:
            for path, name in _walk(staging):
                tar.add(path, arcname=f"{spec.model_name}/{name}")
            info = tarfile.TarInfo(f"{spec.model_name}/{MANIFEST_PATH}")
            info.size = len(manifest.encode())
            tar.addfile(info, BytesIO(manifest.encode()))
    elif spec.archive_format == "no-archive":
        output.mkdir(parents=True, exist_ok=True)
        for path, name in _walk(staging):
            (output / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, output / name)
        (output / MANIFEST_PATH).parent.mkdir(exist_ok=True)
        (output / MANIFEST_PATH).write_text(manifest)
    else:
        method = zipfile.ZIP_STORED if spec.archive_format == "zip-store" else zipfile.ZIP_DEFLATED
        with zipfile.ZipFile(output, "w", method) as zip:
            for path, name in _walk(staging):
                zip.write(path, name)
            zip.writestr(MANIFEST_PATH, manifest)


def create_archive(spec: ArchiveSpec) -> Path:
    """Writes the archive `spec` describes and returns its path."""
    if not MODEL_NAME.match(spec.model_name):
        raise ArchiverError(
            f"Model name {spec.model_name!r} contains special characters; allowed: "
            f"{MODEL_NAME.pattern}"
        )
    if spec.runtime not in RUNTIMES:
        raise ArchiverError(f"runtime must be one of {', '.join(RUNTIMES)}, not {spec.runtime!r}")
    if spec.archive_format not in FORMATS:
        raise ArchiverError(f"archive format must be one of {', '.join(FORMATS)}")
    if not Path(spec.export_path).is_dir():
        raise ArchiverError(f"export path {spec.export_path} is not a folder")
    output = spec.output_path()
    if output.exists() and not spec.force:
        raise ArchiverError(f"{output} already exists; use --force to overwrite it")
    manifest = json.dumps(manifest_for(spec), indent=2)
    with tempfile.TemporaryDirectory(prefix="pyserve-archive-") as staging:
        _stage(spec, Path(staging))
        _write(spec, Path(staging), manifest, output)
    return output
