"""Turns a registration into a ModelVersion: find the archive, unpack it once, read its
manifest and model-config yaml, settle every setting, install its requirements if allowed.

Which value wins, for each setting (TorchServe's order, except where noted):
- batch_size, max_batch_delay: the API or CLI value, else the yaml (batchSize,
  maxBatchDelay), else 1 and 100 ms;
- min/max workers: the yaml's minWorkers/maxWorkers when valid, else initial_workers;
- response_timeout, startup_timeout: the API value, else the yaml's, else the server's
  default (TorchServe lets an unwritten yaml value of 120 override the API: a bug);
- job_queue_size: the yaml's jobQueueSize, else the server's job_queue_size;
- sequence batching (sequenceBatching with sequenceMaxIdleMSec above 0), clientTimeoutInMills,
  and pyserve's waitForFullBatch: the yaml's only;
- max_retry_timeout: the yaml's maxRetryTimeoutInSec (an integer; a negative one is 0),
  else 300 s;
- autoscaling thresholds (pyserve's own): the yaml's autoscale* keys, else the server's
  autoscale_* settings (AUTOSCALE_KEYS).
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import yaml

from pyserve import archive
from pyserve.config import INT_MAX, Settings
from pyserve.engine.allowed_urls import refuse_double_encoding, resolved, url_allowed
from pyserve.engine.autoscale import AutoscaleConfig
from pyserve.engine.fetch import fetch, is_url
from pyserve.engine.models import ModelConfig, ModelVersion, SequenceConfig
from pyserve.errors import BadRequest, ModelNotFound, ServeError
from pyserve.names import check_model_name

log = logging.getLogger("pyserve.engine")

RUNTIMES = ("python", "python3")
# AutoscaleConfig field: (model-config yaml key, Settings field, highest value)
AUTOSCALE_KEYS = {
    "up_queue_ms": ("autoscaleUpQueueMs", "autoscale_up_queue_ms", INT_MAX),
    "up_sustain_sec": ("autoscaleUpSustainSec", "autoscale_up_sustain_sec", INT_MAX),
    "down_idle_sec": ("autoscaleDownIdleSec", "autoscale_down_idle_sec", INT_MAX),
    "down_busy_percent": ("autoscaleDownBusyPercent", "autoscale_down_busy_percent", 100),
    "cooldown_sec": ("autoscaleCooldownSec", "autoscale_cooldown_sec", INT_MAX),
}


@dataclass
class RegisterOptions:
    """What a registration may override, named as TorchServe's register parameters."""

    model_name: str | None = None
    handler: str | None = None
    runtime: str | None = None
    batch_size: int | None = None
    max_batch_delay: int | None = None
    initial_workers: int | None = None
    response_timeout: int | None = None
    startup_timeout: int | None = None


async def resolve_source(url: str, settings: Settings, from_api: bool = True) -> tuple[Path, bool]:
    """A url given at registration -> (the archive or folder it names, downloaded by us?).

    Through the API, an absolute path outside the model store is held to allowed_urls as the
    file:// URL of its real path (engine/allowed_urls.py): otherwise whoever reaches the
    management API could serve (and run the handler of) any folder on the host. Paths given
    on the command line are the operator's.
    """
    if not url:
        raise ModelNotFound("empty url")
    if is_url(url):
        return await fetch(url, settings)
    if ".." in Path(url).parts:
        raise ModelNotFound(f"Relative path is not allowed in url: {url}")
    if from_api:
        refuse_double_encoding(url, url)
    path = Path(url)
    if not path.is_absolute():
        if settings.model_store is None:
            raise BadRequest("No model store configured: start pyserve with --model-store")
        path = Path(settings.model_store) / url
    if not path.exists():
        raise ModelNotFound(f"Model not found at: {url}")
    if from_api and not _in_model_store(path, settings.model_store):
        path, as_url = resolved(path)
        if not url_allowed(as_url, settings.allowed_urls):
            raise ModelNotFound(f"Model path {url} is outside the model store and {as_url} "
                                "does not match any allowed URL(s)")
    return path, False


def _in_model_store(path: Path, model_store: str | None) -> bool:
    return model_store is not None and path.resolve().is_relative_to(Path(model_store).resolve())


def inside_model(model_dir: Path, name: str, what: str) -> Path:
    """A file the manifest names, refused unless it lies inside the model's folder."""
    path = (model_dir / name).resolve()
    if not path.is_relative_to(model_dir.resolve()):
        raise BadRequest(f"{what} {name} is outside the model archive")
    return path


def read_yaml(model_dir: Path, config_file: str | None) -> dict:
    if not config_file:
        return {}
    path = inside_model(model_dir, config_file, "model config")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise BadRequest(f"cannot read model config {config_file}: {error}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise BadRequest(f"model config {config_file} is not a mapping of keys to values")
    return loaded


def _positive(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _non_negative(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _retry_timeout(value) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return max(value, 0)
    return ModelConfig.max_retry_timeout


def _check_yaml_ints(yaml_config: dict) -> None:
    """TorchServe reads these keys as Java ints: a larger number is refused, never wrapped."""
    for key in ("batchSize", "maxBatchDelay", "responseTimeout", "startupTimeout", "jobQueueSize",
                "minWorkers", "maxWorkers", "maxRetryTimeoutInSec", "clientTimeoutInMills",
                "sequenceMaxIdleMSec", "sequenceTimeoutMSec", "maxSequenceJobQueueSize",
                "maxNumSequence"):
        value = yaml_config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > INT_MAX:
            raise BadRequest(f"model config {key}: {value} is out of range; at most {INT_MAX}")


def settle_config(options: RegisterOptions, yaml_config: dict, settings: Settings,
                  default_workers: int) -> ModelConfig:
    _check_yaml_ints(yaml_config)
    config = ModelConfig(
        batch_size=_positive(options.batch_size) or _positive(yaml_config.get("batchSize")) or 1,
        max_batch_delay=next(
            (v for v in (_non_negative(options.max_batch_delay),
                         _non_negative(yaml_config.get("maxBatchDelay"))) if v is not None), 100),
        response_timeout=next(
            (v for v in (_positive(options.response_timeout),
                         _positive(yaml_config.get("responseTimeout"))) if v is not None),
            settings.default_response_timeout),
        startup_timeout=next(
            (v for v in (_non_negative(options.startup_timeout),
                         _non_negative(yaml_config.get("startupTimeout"))) if v is not None),
            settings.default_startup_timeout),
        job_queue_size=_positive(yaml_config.get("jobQueueSize")) or settings.job_queue_size,
        max_retry_timeout=_retry_timeout(yaml_config.get("maxRetryTimeoutInSec")),
    )
    workers = options.initial_workers if options.initial_workers is not None else default_workers
    workers = max(workers, 0)
    yaml_min = _positive(yaml_config.get("minWorkers"))
    yaml_max = _positive(yaml_config.get("maxWorkers"))
    if yaml_min and yaml_max and yaml_max >= yaml_min:
        config.min_workers, config.max_workers = yaml_min, yaml_max
    else:
        config.min_workers = config.max_workers = workers
    device_type = str(yaml_config.get("deviceType", "")).lower()
    if device_type in ("cpu", "gpu"):
        config.device_type = device_type
    device_ids = yaml_config.get("deviceIds")
    if isinstance(device_ids, list) and all(isinstance(i, int) for i in device_ids):
        config.device_ids = device_ids
    config.client_timeout = _non_negative(yaml_config.get("clientTimeoutInMills")) or 0
    config.wait_for_full_batch = yaml_config.get("waitForFullBatch") is True
    config.sequence = sequence_config(yaml_config)
    config.autoscale = autoscale_config(yaml_config, settings)
    return config


def autoscale_config(yaml_config: dict, settings: Settings) -> AutoscaleConfig:
    """Each threshold from the yaml when it is a number in range, else from the server's."""
    values = {}
    for name, (yaml_key, setting, highest) in AUTOSCALE_KEYS.items():
        value = yaml_config.get(yaml_key)
        valid = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= highest
        values[name] = value if valid else getattr(settings, setting)
    return AutoscaleConfig(**values)


def sequence_config(yaml_config: dict) -> SequenceConfig | None:
    """TorchServe's sequence batching: on with sequenceBatching and a sequenceMaxIdleMSec
    above 0. At most maxNumSequence sequences are open at once (TorchServe 0.12 refuses the
    next one; later versions raise the bound to batchSize x maxWorkers)."""
    max_idle = _positive(yaml_config.get("sequenceMaxIdleMSec"))
    if yaml_config.get("sequenceBatching") is not True or not max_idle:
        return None
    return SequenceConfig(
        max_idle=max_idle,
        timeout=_non_negative(yaml_config.get("sequenceTimeoutMSec")) or 0,
        max_queue=_positive(yaml_config.get("maxSequenceJobQueueSize")) or 1,
        max_sequences=_positive(yaml_config.get("maxNumSequence")) or 1,
        continuous=yaml_config.get("continuousBatching") is True,
    )


def describe_archive(url: str, model_dir: Path, options: RegisterOptions) -> tuple[dict, str, str, str]:
    """(manifest, name, version, handler) for the unpacked archive."""
    try:
        manifest = archive.read_manifest(model_dir)
    except archive.ArchiveError as error:  # e.g. a manifest over 1 MiB: a megabyte-long name
        raise BadRequest(str(error)) from None
    info = manifest["model"]
    name = check_model_name(options.model_name or info.get("modelName")
                            or archive.default_model_name(url))
    version = str(info.get("modelVersion") or "1.0")
    handler = options.handler or info.get("handler")
    if not handler:
        raise BadRequest(f"Model {name} has no handler: give one with the handler parameter")
    runtime = options.runtime or manifest.get("runtime", "python")
    if runtime not in RUNTIMES:
        raise BadRequest(f"Invalid RuntimeType value: {runtime}")
    return manifest, name, version, handler


async def install_requirements(model: ModelVersion, target: Path) -> None:
    """`pip install -t target -r requirements` for the model, before any worker starts."""
    requirements = model.manifest["model"].get("requirementsFile")
    if not requirements:
        return
    command = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check",
               "--no-input", "-U", "-t", str(target), "-r",
               str(inside_model(model.model_dir, requirements, "requirements file"))]
    result = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True)
    if result.returncode != 0:
        log.error("pip failed for model %s:\n%s", model.name, result.stderr[-4000:])
        raise BadRequest(f"Custom pip package installation failed for model {model.name}")
    model.dependency_dir = target


async def prepare(
    url: str,
    options: RegisterOptions,
    settings: Settings,
    extract_root: Path,
    core_id: int,
    default_workers: int,
    registered: dict[str, dict[str, ModelVersion]],
    from_api: bool = True,
) -> ModelVersion:
    """Everything a registration does before workers start; cleans up after itself on error."""
    source, downloaded = await resolve_source(url, settings, from_api)
    unpacked = extract_root / uuid.uuid4().hex
    try:
        model_dir = await asyncio.to_thread(archive.extract, source, unpacked)
    except archive.ArchiveError as error:
        if downloaded:
            source.unlink(missing_ok=True)
        raise BadRequest(str(error)) from None
    try:
        manifest, name, version, handler = describe_archive(url, model_dir, options)
        if version in registered.get(name, {}):
            raise ServeError(409, "ConflictStatusException",
                             f"Model version {version} is already registered for model {name}")
        yaml_config = read_yaml(model_dir, manifest["model"].get("configFile"))
        model = ModelVersion(
            name=name, version=version, url=url, model_dir=model_dir, manifest=manifest,
            handler=handler, config=settle_config(options, yaml_config, settings, default_workers),
            core_id=core_id, extracted=model_dir == unpacked, yaml_config=yaml_config,
            runtime=options.runtime or manifest.get("runtime", "python"),
            downloaded_archive=source if downloaded else None,
        )
        if settings.install_py_dep_per_model:
            await install_requirements(model, extract_root / f"{unpacked.name}-deps")
    except BaseException:
        if downloaded:
            source.unlink(missing_ok=True)
        archive.remove_extracted(unpacked, extract_root)
        archive.remove_extracted(extract_root / f"{unpacked.name}-deps", extract_root)
        raise
    return model
