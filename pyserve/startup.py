"""The models a server loads at start (`--models`, load_models, or TorchServe's
model_snapshot, which replaces them), and what it tells its starter.

As in TorchServe, a startup model that cannot be loaded is left out and the server serves
the others. pyserve also says why (for a handler that fails, its own error from the worker)
and which models it serves, in its log and in the ready report `pyserve start` prints.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from pyserve import archive
from pyserve.config import Settings
from pyserve.engine import Engine
from pyserve.engine.engine import WorkersDidNotLoad
from pyserve.engine.loading import RegisterOptions
from pyserve.engine.models import ModelVersion
from pyserve.errors import ServeError
from pyserve.logs import escape_control_characters
from pyserve.model_snapshot import SnapshotVersion, read_snapshot

log = logging.getLogger("pyserve")


@dataclass
class Startup:
    """What loading the startup models came to."""

    served: list[ModelVersion] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # "URL: why", one line each


def startup_models(settings: Settings) -> list[tuple[str | None, str]]:
    """`--models` / load_models entries as (name or None, url); `all` (any case, as TorchServe
    reads it) means the whole store."""
    entries: list[tuple[str | None, str]] = []
    for entry in settings.load_models:
        if entry.lower() == "all":
            store = Path(settings.model_store or ".")
            for path in sorted(store.iterdir()):
                if not path.name.startswith(".") and (
                    path.is_dir() or path.name.endswith(archive.ARCHIVE_SUFFIXES)
                ):
                    entries.append((None, path.name))
        elif "=" in entry:
            name, url = entry.split("=", 1)
            entries.append((name, url))
        else:
            entries.append((None, entry))
    return entries


def why_not_loaded(error: ServeError | archive.ArchiveError) -> str:
    message = getattr(error, "message", str(error))
    if isinstance(error, WorkersDidNotLoad) and error.cause:
        return f"{message}: {error.cause}"
    return message


async def load_startup_models(engine: Engine, settings: Settings) -> Startup:
    if settings.model_snapshot is not None:
        return await load_snapshot_models(engine, settings)
    startup = Startup()
    for name, url in startup_models(settings):
        try:
            model = await engine.register(url, RegisterOptions(model_name=name),
                                          loaded_at_startup=True)
        except (ServeError, archive.ArchiveError) as error:
            why = why_not_loaded(error)
            log.error("cannot load %s: %s", url, why)
            startup.failures.append(escape_control_characters(f"{url}: {why}"))
            continue
        log.info("model %s:%s is served from %s with %d workers", model.name, model.version,
                 url, len(model.live_workers()))
        startup.served.append(model)
    return startup


async def load_snapshot_version(engine: Engine, entry: SnapshotVersion) -> ModelVersion:
    """Registers one snapshot entry with the snapshot's settings: they win over the archive's
    yaml, its worker range included (TorchServe's Model.setModelState)."""
    model = await engine.register(entry.mar_name, RegisterOptions(
        model_name=entry.name, runtime=entry.runtime, batch_size=entry.batch_size,
        max_batch_delay=entry.max_batch_delay, initial_workers=entry.min_workers,
        response_timeout=entry.response_timeout, startup_timeout=entry.startup_timeout,
    ), loaded_at_startup=True)
    if (model.config.min_workers, model.config.max_workers) != (entry.min_workers,
                                                                entry.max_workers):
        await engine.scale(model, entry.min_workers, entry.max_workers, synchronous=True)
    if entry.default:
        engine.set_default(model.name, model.version)
    return model


async def load_snapshot_models(engine: Engine, settings: Settings) -> Startup:
    """Every version model_snapshot lists (checked already: `pyserve start` refuses a snapshot
    it cannot read). A version that cannot be loaded is left out, as other startup models are;
    TorchServe stops restoring at the first one that fails."""
    if settings.load_models:
        log.warning("model_snapshot is set: load_models (--models) is ignored, as in TorchServe")
    entries = read_snapshot(settings.model_snapshot or "", settings.model_store)
    if not entries:
        log.warning("model_snapshot lists no models (a modelCount of 0 or none means none, "
                    "as in TorchServe): starting without models")
    startup = Startup()
    for entry in entries:
        try:
            model = await load_snapshot_version(engine, entry)
        except (ServeError, archive.ArchiveError) as error:
            why = why_not_loaded(error)
            log.error("cannot load %s (model %s): %s", entry.mar_name, entry.name, why)
            startup.failures.append(escape_control_characters(f"{entry.mar_name}: {why}"))
            continue
        log.info("model %s:%s is served from %s with %d workers (model_snapshot)", model.name,
                 model.version, entry.mar_name, len(model.live_workers()))
        startup.served.append(model)
    return startup


def serving_line(models: list[ModelVersion]) -> str:
    """`serving: mnist 1.0 (4 workers), echo 1.0 (1 worker)`, or `serving: no models`."""
    def one(model: ModelVersion) -> str:
        workers = len(model.live_workers())
        return f"{model.name} {model.version} ({workers} worker{'' if workers == 1 else 's'})"

    served = ", ".join(one(model) for model in models) or "no models"
    return escape_control_characters(f"serving: {served}")


def ready_report(listening: str, startup: Startup, keys: Path | None) -> str:
    """The report a server sends its starter once ready: "ready", then one line each."""
    lines = ["ready", listening, serving_line(startup.served)]
    if keys is not None:
        lines.append(f"token authorization is on: keys in {keys}")
    lines += [f"warning: cannot load {failure}" for failure in startup.failures]
    return "\n".join(lines)
