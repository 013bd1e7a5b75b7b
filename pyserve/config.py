"""One Settings object, read from config.properties, then TS_* environment variables, then CLI flags.

The keys and defaults are TorchServe's, so an existing config.properties works as it is.
Environment variables are read only when ``enable_envvars_config=true``, as in TorchServe.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit


class ConfigError(Exception):
    """A configuration value that cannot be used; the message names the key."""


@dataclass
class Settings:
    inference_address: str = "http://127.0.0.1:8080"
    management_address: str = "http://127.0.0.1:8081"
    metrics_address: str = "http://127.0.0.1:8082"
    grpc_inference_address: str = "127.0.0.1"  # gRPC (pyserve/grpc): a host; the port apart
    grpc_inference_port: int = 7070
    grpc_management_address: str = "127.0.0.1"
    grpc_management_port: int = 7071
    enable_grpc_ssl: bool = False  # both gRPC listeners over TLS: private_key_file, certificate_file
    model_store: str | None = None
    load_models: list[str] = field(default_factory=list)
    model_snapshot: str | None = None  # TorchServe's JSON list of startup models (model_snapshot.py)
    default_workers_per_model: int = 0
    job_queue_size: int = 100
    max_request_size: int = 6553500
    max_response_size: int = 6553500
    default_response_timeout: int = 120
    default_startup_timeout: int = 120
    number_of_gpu: int | None = None
    allowed_urls: list[str] = field(default_factory=list)  # TorchServe allows any URL: see engine/fetch.py
    use_env_allowed_urls: bool = False
    disable_token_authorization: bool = False
    token_expiration_min: float = 60
    enable_model_api: bool = False
    enable_envvars_config: bool = False
    install_py_dep_per_model: bool = False
    limit_max_image_pixels: bool = True
    decode_input_request: bool = True
    service_envelope: str | None = None  # kserve or kservev2 (pyserve/worker/envelopes)
    initial_worker_port: int = 9000
    unregister_model_timeout: int = 120
    graceful_shutdown_timeout: int = 30
    enable_metrics_api: bool = True
    metrics_mode: str = "log"  # log, prometheus or legacy: where TorchServe's metrics go (metrics_log.py)
    metric_time_interval: int = 60  # seconds between two collections of the system metrics
    disable_system_metrics: bool = False
    frontend_processes: int = 0  # pyserve: processes serving the inference listener; 0: auto
    max_download_size: int = 1 << 30  # pyserve: largest archive a registration downloads, in bytes
    download_timeout: int = 600  # pyserve: seconds a registration's whole download may take
    max_connections: int = 10_000  # pyserve: open connections per listener and process; past it, 503
    # pyserve: defaults of the models' autoscaling (engine/autoscale.py), when min < max workers
    autoscale_up_queue_ms: float = 100
    autoscale_up_sustain_sec: float = 3
    autoscale_down_idle_sec: float = 60
    autoscale_down_busy_percent: float = 30
    autoscale_cooldown_sec: float = 10
    private_key_file: str | None = None  # TLS for https:// addresses (see frontend/tls.py)
    certificate_file: str | None = None
    keystore: str | None = None
    keystore_pass: str = "changeit"
    keystore_type: str = "PKCS12"

    def merged(self, **overrides: Any) -> "Settings":
        """A copy with the given fields replaced; None values are ignored."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


# TorchServe reads these as Java ints; pyserve refuses what TorchServe could not hold rather
# than letting a size or a count wrap round, or sizing memory after it.
INT_MAX = 2**31 - 1
MAX_FRONTEND_PROCESSES = 256
_BOUNDS = {
    "default_workers_per_model": (0, INT_MAX),
    "job_queue_size": (1, INT_MAX),
    "max_request_size": (1, INT_MAX),
    "max_response_size": (1, INT_MAX),
    "default_response_timeout": (1, INT_MAX),
    "default_startup_timeout": (0, INT_MAX),
    "number_of_gpu": (0, INT_MAX),
    "initial_worker_port": (0, INT_MAX),
    "unregister_model_timeout": (0, INT_MAX),
    "graceful_shutdown_timeout": (0, INT_MAX),
    "frontend_processes": (0, MAX_FRONTEND_PROCESSES),
    "max_download_size": (1, 2**63 - 1),
    "download_timeout": (1, INT_MAX),
    "max_connections": (1, INT_MAX),
    "metric_time_interval": (1, INT_MAX),
    "autoscale_up_queue_ms": (0, INT_MAX),
    "autoscale_up_sustain_sec": (0, INT_MAX),
    "autoscale_down_idle_sec": (0, INT_MAX),
    "autoscale_down_busy_percent": (0, 100),
    "autoscale_cooldown_sec": (0, INT_MAX),
}


def check_bounds(settings: "Settings") -> None:
    """ConfigError naming the first setting outside the range pyserve can honour."""
    for key, (lowest, highest) in _BOUNDS.items():
        value = getattr(settings, key)
        if value is not None and not lowest <= value <= highest:
            raise ConfigError(f"{key}: {value} is out of range; it must be between {lowest} and {highest}")


def _as_bool(key: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no", ""):
        return False
    raise ConfigError(f"{key}: expected true or false, got {value!r}")


def _as_int(key: str, value: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise ConfigError(f"{key}: expected an integer, got {value!r}") from None


def _convert(key: str, value: str) -> Any:
    kind = {f.name: f.type for f in dataclasses.fields(Settings)}[key]
    if kind == "bool":
        return _as_bool(key, value)
    if kind in ("int", "int | None"):
        return _as_int(key, value)
    if kind == "float":
        try:
            return float(value.strip())
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if kind == "list[str]":
        return [item.strip() for item in value.split(",") if item.strip()]
    return value.strip()


def model_list(words: list[str]) -> list[str]:
    """`--models` words as load_models entries: TorchServe joins the words with commas and
    splits load_models on commas, so `a.mar,b.mar c.mar` names three models."""
    return [entry.strip() for word in words for entry in word.split(",") if entry.strip()]


_FIELDS = {f.name for f in dataclasses.fields(Settings)}
_PLACEHOLDER = re.compile(r"\$\$([A-Za-z_][A-Za-z0-9_]*)\$\$")
_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|.)")
_ESCAPED = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


def _unescape(value: str) -> str:
    """Java properties escapes: \\t, \\n, \\uXXXX; any other escaped character stands for itself."""
    def replace(match: re.Match) -> str:
        code = match.group(1)
        if len(code) == 5:
            return chr(int(code[1:], 16))
        return _ESCAPED.get(code, code)

    return _ESCAPE.sub(replace, value)


def read_properties(text: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Parses Java properties: `key=value` or `key: value`, # and ! comments, \\ continuations.

    `$$VAR$$` in a value is replaced from the environment, as TorchServe does.
    """
    env = os.environ if env is None else env
    properties: dict[str, str] = {}
    logical = ""
    for raw in text.splitlines():
        line = raw.strip() if not logical else raw.lstrip()
        if not logical and (not line or line[0] in "#!"):
            continue
        if (len(line) - len(line.rstrip("\\"))) % 2 == 1:  # an odd number of \ continues the line
            logical += line[:-1]
            continue
        logical += line
        match = re.match(r"([^=:\s]+)\s*[=:\s]\s*(.*)$", logical)
        if match:
            key, value = match.group(1), match.group(2)
            value = _PLACEHOLDER.sub(lambda m: env.get(m.group(1), ""), _unescape(value))
            properties[_unescape(key)] = value
        elif logical:
            properties[logical] = ""
        logical = ""
    return properties


def load_settings(
    config_file: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    **cli: Any,
) -> Settings:
    """Settings from `config_file` (if any), then TS_* env vars (if enabled), then CLI values.

    Unknown keys in the file are kept out of Settings: TorchServe has many JVM-only keys
    (vmargs, netty threads) that pyserve has no use for.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        try:
            text = path.read_text()
        except OSError as error:
            raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
        for key, value in read_properties(text, env).items():
            if key in _FIELDS:
                values[key] = _convert(key, value)
    if values.get("enable_envvars_config") or _as_bool(
        "TS_ENABLE_ENVVARS_CONFIG", env.get("TS_ENABLE_ENVVARS_CONFIG", "false")
    ):
        from_env = {name: _convert(name, env[f"TS_{name.upper()}"]) for name in _FIELDS
                    if f"TS_{name.upper()}" in env}
        # As in TorchServe, the URL allow-list is taken from the environment only on request;
        # otherwise the file's value stands.
        if not from_env.get("use_env_allowed_urls", values.get("use_env_allowed_urls")):
            from_env.pop("allowed_urls", None)
        values.update(from_env)
    settings = Settings(**values).merged(**cli)
    check_bounds(settings)
    return settings


def parse_address(address: str) -> tuple[str, int]:
    """`http://127.0.0.1:8080` (or `127.0.0.1:8080`) -> ("127.0.0.1", 8080)."""
    parts = urlsplit(address if "://" in address else f"http://{address}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"cannot use listener address {address!r}: expected http://host:port")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"cannot use listener address {address!r}: bad port") from None
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    return parts.hostname, port
