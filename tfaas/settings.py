"""The one settings object of TFaaS, read from defaults, a JSON config file, the environment and the CLI.

Precedence, lowest first: defaults, the config file, ``TFAAS_*`` environment variables, command-line flags.
The config file may use the original Go server's keys (``port``, ``modelDir``, ``base``, ``serverKey``,
``serverCrt``) as well as this server's own names.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from servicecore.auth import AuthSettings
from servicecore.errors import BadInputError

ENV_PREFIX = "TFAAS_"
# prometheus_client reads it when first imported: it must be set before a worker imports tfaas.metrics.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
MiB = 1024 * 1024

# The original server's config keys, mapped onto ours.
ORIGINAL_KEYS = {"modelDir": "model_dir", "serverKey": "tls_key", "serverCrt": "tls_cert"}
# Keys of the original config that have no meaning here; accepted and ignored so old files still load.
IGNORED_KEYS = {"cacheLimit", "rate", "verbose", "configProto", "staticDir", "limiter", "logFile"}


@dataclass(frozen=True)
class BatchingSettings:
    """Server-side dynamic batching: requests that arrive together on a worker run as one model call."""

    enabled: bool = True
    max_rows: int = 4096
    max_wait_ms: float = 2.0
    # Models run by the NumPy engine cost tens of microseconds a call: gathering their requests costs more
    # than it saves (measured in bench/results/tfaas.md), so by default only TensorFlow-run models batch.
    numpy_models: bool = False


@dataclass(frozen=True)
class Settings:
    model_dir: Path
    host: str = "127.0.0.1"
    port: int = 8083
    base: str = ""  # URL prefix, e.g. "/tfaas"
    workers: int = 2
    threads: int = 8
    timeout_s: int = 60
    max_body_bytes: int = 16 * MiB  # predict requests
    max_upload_bytes: int = 512 * MiB  # the upload body, and separately the unpacked archive
    max_upload_members: int = 10_000
    max_batch_rows: int = 100_000  # rows in one predict request
    reload_interval_s: float = 1.0  # how often each worker looks at the repository for changes
    preload: bool = True  # each worker loads every model's latest version at start, before it reports ready
    numpy_engine: bool = True  # run dense-layer graphs with NumPy when they give the same numbers as TF
    tf_threads: int = 1  # TensorFlow intra/inter-op threads per worker; 0 lets TensorFlow decide
    batching: BatchingSettings = field(default_factory=BatchingSettings)
    tls_cert: str | None = None
    tls_key: str | None = None
    metrics_dir: Path | None = None  # prometheus_client multiprocess directory under gunicorn
    auth: Mapping[str, Any] = field(default_factory=dict)  # handed to servicecore.auth when not empty
    log_level: str = "info"

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise BadInputError(f"port must be between 1 and 65535, got {self.port}")
        if self.base and (not self.base.startswith("/") or self.base.endswith("/")):
            raise BadInputError(f"base must start with '/' and not end with one, got {self.base!r}")
        if self.workers < 1 or self.threads < 1:
            raise BadInputError("workers and threads must be at least 1")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise BadInputError("TLS needs both serverCrt/tls_cert and serverKey/tls_key")
        self.auth_settings  # noqa: B018 (refuses, at start-up, auth settings that would open TFaaS)

    @property
    def auth_settings(self) -> AuthSettings:
        """The identity settings for the address TFaaS binds (``servicecore.auth``, docs/auth.md)."""
        return AuthSettings.from_mapping(self.auth).for_bind(self.host)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], base: Settings | None = None) -> Settings:
        """Settings from a dict (a config file's content), on top of ``base`` or the defaults."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in data.items():
            name = ORIGINAL_KEYS.get(key, key)
            if key in IGNORED_KEYS:
                continue
            if name not in known:
                raise BadInputError(f"unknown TFaaS setting {key!r}")
            values[name] = value
        return _build(cls, values, base)

    @classmethod
    def from_file(cls, path: str | Path, base: Settings | None = None) -> Settings:
        try:
            data = json.loads(Path(path).read_text())
        except OSError as err:
            raise BadInputError(f"cannot read config {str(path)!r}: {err.strerror}") from None
        except json.JSONDecodeError as err:
            raise BadInputError(f"config {str(path)!r} is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise BadInputError(f"config {str(path)!r} must hold a JSON object")
        return cls.from_mapping(data, base)

    @classmethod
    def load(
        cls,
        config_file: str | Path | None = None,
        environ: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> Settings:
        """Defaults, the config file (``config_file`` or ``$TFAAS_CONFIG``), the environment, overrides."""
        environ = os.environ if environ is None else environ
        config_file = config_file or environ.get(f"{ENV_PREFIX}CONFIG")
        file_values: dict[str, Any] = {}
        if config_file:
            file_values = dataclasses.asdict(cls.from_file(config_file, _placeholder()))
        env_values = _from_environment(environ)
        given = {k: v for k, v in overrides.items() if v is not None}
        merged = _merge(_merge(file_values, env_values), given)
        if merged.get("model_dir") in (None, "", Path()):
            raise BadInputError("no model repository: give --model-dir, TFAAS_MODEL_DIR or modelDir")
        return _build(cls, merged, None)


def _placeholder() -> Settings:
    return Settings(model_dir=Path())


def _build(cls: type[Settings], values: dict[str, Any], base: Settings | None) -> Settings:
    merged = _merge(dataclasses.asdict(base) if base is not None else {}, values)
    batching = merged.get("batching", {})
    try:
        merged["batching"] = BatchingSettings(**_coerce_fields(BatchingSettings, dict(batching)))
        merged["model_dir"] = Path(merged["model_dir"]) if merged.get("model_dir") is not None else None
        if merged.get("metrics_dir"):
            merged["metrics_dir"] = Path(merged["metrics_dir"])
        if merged.get("model_dir") is None:
            merged["model_dir"] = Path()
        return cls(**_coerce_fields(cls, merged))
    except (TypeError, ValueError) as err:
        raise BadInputError(f"invalid TFaaS setting: {err}") from None


def _merge(lower: dict[str, Any], higher: dict[str, Any]) -> dict[str, Any]:
    """Overlay ``higher`` on ``lower``; the ``batching`` section is merged key by key."""
    merged = {**lower, **higher}
    if "batching" in higher:
        merged["batching"] = {**_batching_dict(lower.get("batching")), **_batching_dict(higher["batching"])}
    return merged


def _batching_dict(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, bool | str):
        return {"enabled": value}
    if isinstance(value, BatchingSettings):
        return dataclasses.asdict(value)
    if not isinstance(value, Mapping):
        raise BadInputError(f"batching must be true, false or an object, got {value!r}")
    return dict(value)


def _coerce_fields(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Turn strings (from the environment) into the declared field types; reject wrong JSON types."""
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name not in types:
            raise TypeError(f"unknown field {name!r}")
        declared = str(types[name])
        if isinstance(value, str) and declared in ("int", "float", "bool"):
            value = _parse_scalar(name, value, declared)
        elif declared == "bool" and not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        elif declared == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        elif declared == "float" and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError(f"{name} must be a number, got {value!r}")
        out[name] = value
    return out


def _parse_scalar(name: str, text: str, declared: str) -> Any:
    if declared == "bool":
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{name} must be true or false, got {text!r}")
    try:
        return int(text) if declared == "int" else float(text)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {text!r}") from None


def _from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """``TFAAS_PORT=9000``, ``TFAAS_BATCHING_MAX_WAIT_MS=1``, ``TFAAS_AUTH='{"issuer": ...}'``."""
    values: dict[str, Any] = {}
    batching: dict[str, Any] = {}
    field_names = {f.name for f in dataclasses.fields(Settings)} - {"batching"}
    batching_names = {f.name for f in dataclasses.fields(BatchingSettings)}
    for key, text in environ.items():
        if not key.startswith(ENV_PREFIX) or key == f"{ENV_PREFIX}CONFIG":
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name == "batching":
            batching["enabled"] = text
        elif name.startswith("batching_") and name[len("batching_") :] in batching_names:
            batching[name[len("batching_") :]] = text
        elif name == "auth":
            try:
                values["auth"] = json.loads(text)
            except json.JSONDecodeError as err:
                raise BadInputError(f"{key} must hold a JSON object: {err}") from None
        elif name in field_names:
            values[name] = text
        else:
            raise BadInputError(f"unknown TFaaS setting in the environment: {key}")
    if batching:
        values["batching"] = batching
    return values
