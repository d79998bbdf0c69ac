"""The one settings object of TFaaS, read from defaults, a config file, the environment and the CLI.

Precedence, lowest first: defaults, the config file (JSON, or YAML), ``TFAAS_*`` environment variables,
command-line flags, read by ``servicecore.settings`` as the MLaaS4HEP server's are. The config file may use
the original Go server's keys (``port``, ``modelDir``, ``base``, ``serverKey``, ``serverCrt``) as well as this
server's own names. ``batching`` is merged key by key (``TFAAS_BATCHING_MAX_ROWS=128``; ``TFAAS_BATCHING=off``
or ``batching: false`` switches it).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from servicecore import settings
from servicecore.auth import AuthSettings
from servicecore.errors import BadInputError

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

    SHORTHAND_FIELD: ClassVar[str] = "enabled"  # ``batching: false``, ``TFAAS_BATCHING=off``

    enabled: bool = True
    max_rows: int = 4096
    max_wait_ms: float = 2.0
    # Models run by the NumPy engine cost tens of microseconds a call: gathering their requests costs more
    # than it saves (measured in bench/results/tfaas.md), so by default only TensorFlow-run models batch.
    numpy_models: bool = False


@dataclass(frozen=True)
class Settings(settings.LoadableSettings):
    ENV_PREFIX: ClassVar[str] = "TFAAS_"
    LABEL: ClassVar[str] = "TFaaS"
    FILE_ALIASES: ClassVar[Mapping[str, str]] = ORIGINAL_KEYS
    IGNORED_FILE_KEYS: ClassVar[Collection[str]] = IGNORED_KEYS

    model_dir: Path
    host: str = "127.0.0.1"
    port: int = 8083
    base: str = ""  # URL prefix, e.g. "/tfaas"
    workers: int = 2
    threads: int = 8
    timeout_s: int = 60
    connection_max_requests: int = 100  # a kept-alive connection is closed after this many: workers rebalance
    max_body_bytes: int = 16 * MiB  # predict requests
    max_upload_bytes: int = 512 * MiB  # the upload body, and separately the unpacked archive
    # A bundle has a handful to a few dozen files; each member costs a file creation (up to 2.7 ms on the
    # shared development disk), so a bound well above a bundle refuses an archive of many members quickly:
    # 10,000 took 2.4 s and 1,000 still 1.8 s to reach in bench/bad_input.py.
    max_upload_members: int = 200
    max_batch_rows: int = 100_000  # rows in one predict request
    reload_interval_s: float = 1.0  # how often each worker looks at the repository for changes
    preload: bool = True  # each worker loads every model's latest version at start, then accepts requests
    preimport: bool = True  # the gunicorn master imports TensorFlow before forking: new workers start in ~1 s
    numpy_engine: bool = True  # run dense-layer graphs with NumPy when they give the same numbers as TF
    tf_threads: int = 1  # TensorFlow intra/inter-op threads per worker; 0 lets TensorFlow decide
    batching: BatchingSettings = field(default_factory=BatchingSettings)
    tls_cert: str | None = None
    tls_key: str | None = None
    metrics_dir: Path | None = None  # prometheus_client multiprocess directory under gunicorn
    # servicecore.auth settings (docs/auth.md); a plain mapping, so that "no auth settings" stays falsy
    auth: Mapping[str, Any] = field(default_factory=dict, metadata={settings.SCHEMA: AuthSettings})
    log_level: str = "info"

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise BadInputError(f"setting port must be between 1 and 65535, got {self.port}")
        if self.base and (not self.base.startswith("/") or self.base.endswith("/")):
            raise BadInputError(f"setting base must start with '/' and not end with one, got {self.base!r}")
        if self.workers < 1 or self.threads < 1:
            raise BadInputError("setting workers and threads must be at least 1")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise BadInputError("setting tls_cert: TLS needs both serverCrt/tls_cert and serverKey/tls_key")
        self.auth_settings  # noqa: B018 (refuses, at start-up, auth settings that would open TFaaS)

    @property
    def auth_settings(self) -> AuthSettings:
        """The identity settings for the address TFaaS binds (``servicecore.auth``, docs/auth.md)."""
        return AuthSettings.from_mapping(self.auth).for_bind(self.host)
