"""TorchServe's `model_snapshot` (config.properties): the models a server starts with, each
version with its archive and its settings. TorchServe writes one on every change and KServe's
TorchServe layout ships one (`/mnt/models/config/config.properties`):

    model_snapshot={"name":"startup.cfg","modelCount":1,"models":{"mnist":{"1.0":{
        "defaultVersion":true,"marName":"mnist.mar","minWorkers":1,"maxWorkers":5,
        "batchSize":5,"maxBatchDelay":200,"responseTimeout":60}}}}

Read as TorchServe reads it (SnapshotManager, Model.setModelState): a set snapshot replaces
load_models and --models; a modelCount of 0 or none means no models; every archive must be in
the model store, or the server does not start; defaultVersion, marName, minWorkers,
maxWorkers, batchSize and maxBatchDelay are required (TorchServe fails to start without them),
responseTimeout, startupTimeout and runtimeType optional. The version a model gets is its
archive's; the snapshot's version keys only group the entries.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pyserve.config import INT_MAX, ConfigError

# required integer -> the least value it may have
REQUIRED_INTS = {"minWorkers": 0, "maxWorkers": 0, "batchSize": 1, "maxBatchDelay": 0}
OPTIONAL_INTS = {"responseTimeout": 1, "startupTimeout": 0}


@dataclass(frozen=True)
class SnapshotVersion:
    """One version of a model as the snapshot lists it."""

    name: str  # the snapshot's key, whatever name the archive's manifest gives
    mar_name: str  # the archive (or model folder) in the model store
    default: bool
    min_workers: int
    max_workers: int
    batch_size: int
    max_batch_delay: int  # milliseconds
    response_timeout: int | None = None  # seconds; None: the model's yaml, else the server's
    startup_timeout: int | None = None
    runtime: str | None = None


def _integer(where: str, key: str, value: object, least: int) -> int:
    """An integer as Gson's getAsInt reads it (a number or a string of digits), in range."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"model_snapshot: {where}: {key} must be an integer, got {value!r}")
    if not least <= value <= INT_MAX:
        raise ConfigError(f"model_snapshot: {where}: {key} is {value}; it must be between "
                          f"{least} and {INT_MAX}")
    return value


def _boolean(where: str, key: str, value: object) -> bool:
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if not isinstance(value, bool):
        raise ConfigError(f"model_snapshot: {where}: {key} must be true or false, got {value!r}")
    return value


def _version(name: str, version: str, info: object) -> SnapshotVersion:
    where = f"model {name} version {version}"
    if not isinstance(info, dict):
        raise ConfigError(f"model_snapshot: {where} is not a JSON object")
    missing = [key for key in ("defaultVersion", "marName", *REQUIRED_INTS) if info.get(key) is None]
    if missing:
        raise ConfigError(f"model_snapshot: {where} has no {', '.join(missing)}")
    if not isinstance(info["marName"], str) or not info["marName"]:
        raise ConfigError(f"model_snapshot: {where}: marName must be a file name")
    ints = {key: _integer(where, key, info[key], least) for key, least in REQUIRED_INTS.items()}
    ints |= {key: _integer(where, key, info[key], least) for key, least in OPTIONAL_INTS.items()
             if info.get(key) is not None}
    if ints["maxWorkers"] < ints["minWorkers"]:
        raise ConfigError(f"model_snapshot: {where}: maxWorkers ({ints['maxWorkers']}) is less "
                          f"than minWorkers ({ints['minWorkers']})")
    runtime = info.get("runtimeType")
    return SnapshotVersion(
        name=name, mar_name=info["marName"],
        default=_boolean(where, "defaultVersion", info["defaultVersion"]),
        min_workers=ints["minWorkers"], max_workers=ints["maxWorkers"],
        batch_size=ints["batchSize"], max_batch_delay=ints["maxBatchDelay"],
        response_timeout=ints.get("responseTimeout"), startup_timeout=ints.get("startupTimeout"),
        runtime=str(runtime) if runtime is not None else None,
    )


def read_snapshot(text: str, model_store: str | None) -> list[SnapshotVersion]:
    """The versions a model_snapshot value lists, in its order; ConfigError naming the first
    problem, including an archive that is not in the model store."""
    try:
        snapshot = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"model_snapshot: not JSON: {error}") from None
    if not isinstance(snapshot, dict):
        raise ConfigError("model_snapshot: expected a JSON object with modelCount and models")
    models = snapshot.get("models", {})
    if not isinstance(models, dict):
        raise ConfigError("model_snapshot: models must map model names to their versions")
    versions: list[SnapshotVersion] = []
    for name, by_version in models.items():
        if not isinstance(by_version, dict):
            raise ConfigError(f"model_snapshot: model {name} must map versions to settings")
        versions += [_version(name, version, info) for version, info in by_version.items()]
    for entry in versions:
        if model_store is None or not (Path(model_store) / entry.mar_name).exists():
            raise ConfigError(f"model_snapshot: the archive {entry.mar_name} of model {entry.name} "
                              f"is not in the model store ({model_store or 'none is set'})")
    count = snapshot.get("modelCount", 0)
    if _integer("the snapshot", "modelCount", count, -INT_MAX - 1) <= 0:
        return []  # TorchServe: "Model snapshot is empty", whatever models lists
    return versions
