"""The one settings object of the MLaaS4HEP server (API and job workers), and where it is read from.

Precedence, lowest first: the defaults below, a JSON or YAML file (``--config`` or ``$MLAAS4HEP_CONFIG``),
``MLAAS4HEP_<NAME>`` environment variables (``MLAAS4HEP_PORT=8080``; the mappings ``auth`` and ``job_env``
take JSON), then command-line flags, read by ``servicecore.settings`` as TFaaS's are. Every field is
documented in its ``help`` and in docs/server.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from appliance.server.network import parse_endpoints, parse_port_range, scheduler_endpoints
from servicecore import settings
from servicecore.auth import LOCAL_DEMO, TRUSTED_HEADER_DEMO, AuthSettings
from servicecore.errors import BadInputError

MiB = 1024 * 1024
QUEUE_SCHEMES = ("redis://", "rediss://", "unix://")
STORE_SCHEMES = ("postgresql+psycopg://", "postgresql://", "sqlite:///")


def _setting(default: Any, help: str, **metadata: Any) -> Any:
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata={"help": help, **metadata})
    return field(default=default, metadata={"help": help, **metadata})


@dataclass(frozen=True)
class Settings(settings.LoadableSettings):
    ENV_PREFIX: ClassVar[str] = "MLAAS4HEP_"
    LABEL: ClassVar[str] = "MLaaS4HEP server"
    # The same prefix names the scripts' variables and the client's (mlaas4hep-client reads
    # MLAAS4HEP_SERVER, ...), which a user may have exported in the shell that starts the server: not
    # settings, and not typos.
    ENV_NOT_SETTINGS: ClassVar[frozenset[str]] = frozenset(
        f"MLAAS4HEP_{name}"
        for name in (
            # scripts/, molecule/, bench/
            *(
                "VENV",
                "HOST_NAME",
                "HOST_SSH_PORT",
                "HOST_PORT_BASE",
                "TOSCA_BASE_TYPES",
                "MOLECULE_SSH_PORT",
            ),
            *("OAUTH2_PROXY_ARCHIVE", "OAUTH2_CLIENT_ID", "OAUTH2_CLIENT_SECRET"),
            *("NSPAWN_STATE", "NSPAWN_CACHE", "NSPAWN_MIRROR", "NSPAWN_SETUP", "NSPAWN_BINDS"),
            *("FRESH_SSH_PORT", "FRESH_KEEP"),
            *("MH_BRIDGE", "MH_GATEWAY", "MH_PROXY_PORT", "MH_UID"),  # molecule/multihost
            # mlaas4hep_client
            *("SERVER", "TFAAS", "ISSUER", "CLIENT_ID", "CLIENT_SECRET", "FLOW", "AUDIENCE", "SCOPE"),
            *("OIDC_AGENT", "CA_BUNDLE"),
        )
    )

    data_dir: Path = field(
        default=Path(),
        metadata={"help": "root of the job store, uploads, job directories and models (required)"},
    )
    models_dir: Path | None = field(
        default=None, metadata={"help": "model repository that TFaaS serves (default DATA_DIR/models)"}
    )
    host: str = _setting("127.0.0.1", "address the API binds; oauth2-proxy is the public door")
    port: int = _setting(8080, "port of the API")
    workers: int = _setting(2, "gunicorn worker processes of the API")
    threads: int = _setting(4, "threads per gunicorn worker (gthread)")
    timeout_s: int = _setting(120, "gunicorn worker timeout")
    log_level: str = _setting("info", "log level of the API and the workers")
    queue_url: str = _setting(
        "", 'job queue: "" = SQLite in DATA_DIR/queue.db; "redis://host:6379/0" = a shared Redis broker'
    )
    store_url: str = _setting(
        "",
        'job store: "" = SQLite in DATA_DIR/jobs.db; "postgresql+psycopg://USER:PW@HOST/DB" = shared by '
        "every machine (docs/scaling.md)",
    )
    worker_version: str = _setting(
        "", "version this worker reports in its heartbeats (default: the installed appliance's)"
    )
    tfaas_replicas: str = _setting(
        "",
        'URL,... of every TFaaS replica trained models are uploaded to ("" = publish into models_dir)',
    )
    delivery_issuer: str = _setting("", "OIDC issuer whose client-credentials grant gives the upload token")
    delivery_client_id: str = _setting("", "the workers' service client at that issuer")
    delivery_client_secret: str = _setting(
        "", "its secret: config file or MLAAS4HEP_DELIVERY_CLIENT_SECRET, never a command line"
    )
    delivery_audience: str = _setting("", "audience asked for in the upload token (TFaaS's client id)")
    delivery_backoff_max_s: float = _setting(
        60.0, "longest wait between two uploads to a replica that is down"
    )
    max_concurrent_jobs: int = _setting(1, "jobs one worker process runs at once; the others wait queued")
    max_workers_per_job: int = _setting(4, 'most workers one training may ask for ("workers": N)')
    worker_address: str = _setting(
        "127.0.0.1", "IP address the other workers of a multi-worker job reach this worker at"
    )
    task_ports: str = _setting(
        "",
        "ports (FIRST-LAST) a multi-worker job's task listens on for its peers; empty: any free port (one "
        "host). A worker VM's firewall opens this range to the other workers",
    )
    rendezvous_timeout_s: float = _setting(
        120.0, "how long the tasks of a multi-worker job wait for each other before the job fails"
    )
    job_user: str = _setting(
        "mlaas4hep-job", 'unprivileged user jobs run as when the worker runs as root ("" = no switch)'
    )
    python: str = _setting("", "Python interpreter of the training subprocess (default: the worker's)")
    default_memory_mb: int = _setting(4096, "address-space limit of a job that asks for none (MiB)")
    max_memory_mb: int = _setting(16384, "largest memory a request may ask for (MiB)")
    default_cpus: int = _setting(1, "CPU cores of a job that asks for none")
    max_cpus: int = _setting(2, "most CPU cores a request may ask for")
    default_wall_time_s: int = _setting(6 * 3600, "wall-time limit of a job that asks for none")
    max_wall_time_s: int = _setting(48 * 3600, "longest wall time a request may ask for")
    gpu_jobs: bool = _setting(
        True, 'whether requests may ask for "device": "gpu" (taken while a live worker reports a GPU)'
    )
    kill_grace_s: float = _setting(10.0, "seconds between SIGTERM and SIGKILL when a job is stopped")
    heartbeat_s: float = _setting(5.0, "how often a worker marks its running jobs alive")
    stale_after_s: float = _setting(120.0, "a running job whose worker is silent this long is marked failed")
    local_user: str = _setting("local", "the demo user (auth.local_user unless auth sets it; docs/auth.md)")
    trust_forwarded_user: bool = _setting(
        True, "with auth.mode unset on loopback: trusted-header-demo (true) or local-demo (false)"
    )
    auth: Mapping[str, Any] = _setting(
        {},
        "servicecore.auth settings: mode, issuers, policy (docs/auth.md)",
        **{settings.SCHEMA: AuthSettings},
    )
    max_upload_bytes: int = _setting(1024 * MiB, "largest request body and largest unpacked upload")
    # 1,000, not 10,000: every member is a file written before the next is read, and bench/bad_input.py
    # found a 20,000-member archive taking 9 s to refuse at 10,000 on a slow disk. An upload is a workflow's.
    max_upload_members: int = _setting(1_000, "most members in an uploaded archive")
    check_urls: bool = _setting(True, "stat every root:// input when a job is submitted")
    url_check_timeout_s: int = _setting(10, "time allowed for each of those checks")
    follow_max_s: int = _setting(600, "longest a followed log stream stays open")
    job_env: Mapping[str, str] = _setting({}, "extra environment of jobs, e.g. X509_USER_PROXY")
    job_uids: str = _setting("61000-61999", "uids (each also its gid) given to jobs, one per running job")
    job_network: str = _setting("isolated", '"isolated" (own namespace, job_network_allow only) or "host"')
    job_network_allow: str = _setting("127.0.0.1:1094", "ADDRESS:PORT,... a job may reach (XRootD proxy)")
    dask_scheduler: str = _setting(
        "", 'tcp://ADDRESS:PORT of the Dask scheduler predict jobs run on ("" = a local cluster in each job)'
    )
    max_bundle_bytes: int = _setting(4096 * MiB, "largest model bundle a job may produce")
    max_json_bytes: int = _setting(1 * MiB, "largest JSON request body (uploads have max_upload_bytes)")
    disk_quota_bytes: int = _setting(20 * 1024 * MiB, "disk one user's uploads and jobs may use (0 = none)")
    follow_default_s: int = _setting(60, "how long a followed log stream stays open unless asked (follow_s)")
    max_followers_per_user: int = _setting(4, "log streams one user may follow at once (per API process)")
    max_followers: int = _setting(0, "log streams open at once per API process (0 = threads - 1)")
    job_retention_days: float = _setting(
        0.0, "days a finished job (files and record) is kept before the worker deletes it (0 = keep)"
    )
    upload_retention_days: float = _setting(
        0.0, "days an upload is kept before the worker deletes it (0 = keep)"
    )
    sweep_interval_s: float = _setting(3600.0, "how often a worker deletes what has expired")
    tfaas_url: str = _setting(
        "", 'TFaaS whose /models the web page lists, called with the caller\'s token ("" = no list)'
    )

    def __post_init__(self) -> None:
        def check(condition: bool, message: str) -> None:
            if not condition:
                raise BadInputError(f"setting {message}")

        check(str(self.data_dir) not in ("", "."), "data_dir is required (--data-dir or MLAAS4HEP_DATA_DIR)")
        check(0 < self.port < 65536, f"port must be between 1 and 65535, got {self.port}")
        check(self.workers >= 1 and self.threads >= 1, "workers and threads must be at least 1")
        check(self.max_concurrent_jobs >= 1, "max_concurrent_jobs must be at least 1")
        check(self.max_workers_per_job >= 1, "max_workers_per_job must be at least 1")
        check(self.rendezvous_timeout_s > 0, "rendezvous_timeout_s must be positive")
        parse_endpoints(f"{self.worker_address}:1", "worker_address")  # an IP address, not a name
        parse_port_range(self.task_ports, "task_ports")
        check(
            self.queue_url == "" or self.queue_url.startswith(QUEUE_SCHEMES),
            f'queue_url must be "" (SQLite) or a redis:// URL, got {self.queue_url!r}',
        )
        check(
            self.store_url == "" or self.store_url.startswith(STORE_SCHEMES),
            f'store_url must be "" (SQLite) or a postgresql+psycopg:// URL, got {self.store_url!r}',
        )
        check(
            not self.tfaas_replicas
            or all((self.delivery_issuer, self.delivery_client_id, self.delivery_client_secret)),
            "tfaas_replicas needs delivery_issuer, delivery_client_id and delivery_client_secret",
        )
        check(
            all(url.startswith(("http://", "https://")) for url in self.replica_urls),
            f"tfaas_replicas must be http(s):// URLs, got {self.tfaas_replicas!r}",
        )
        check(self.delivery_backoff_max_s > 0, "delivery_backoff_max_s must be positive")
        for name in ("memory_mb", "cpus", "wall_time_s"):
            default, limit = getattr(self, f"default_{name}"), getattr(self, f"max_{name}")
            check(0 < default <= limit, f"default_{name} must be positive and at most max_{name}")
        check(
            self.kill_grace_s >= 0 and self.heartbeat_s > 0, "kill_grace_s and heartbeat_s must be positive"
        )
        check(self.stale_after_s > 2 * self.heartbeat_s, "stale_after_s must exceed two heartbeats")
        check(bool(self.local_user), "local_user must not be empty")
        check(
            self.job_retention_days >= 0 and self.upload_retention_days >= 0,
            "job_retention_days and upload_retention_days must not be negative (0 = keep)",
        )
        check(self.sweep_interval_s > 0, "sweep_interval_s must be positive")
        check(
            self.tfaas_url == "" or self.tfaas_url.startswith(("http://", "https://")),
            f'tfaas_url must be "" or an http(s):// URL, got {self.tfaas_url!r}',
        )
        check(all(isinstance(v, str) for v in self.job_env.values()), "job_env values must be strings")
        scheduler_endpoints(self.dask_scheduler)  # refuses, at start-up, an address a job could not reach
        self.auth_settings  # noqa: B018 (refuses, at start-up, auth settings that would open the API)

    @property
    def auth_settings(self) -> AuthSettings:
        """The identity settings for the address the API binds (``servicecore.auth``, docs/auth.md)."""
        demo = TRUSTED_HEADER_DEMO if self.trust_forwarded_user else LOCAL_DEMO
        auth = AuthSettings.from_mapping({"local_user": self.local_user, **self.auth})
        return auth.for_bind(self.host, loopback_default=demo)

    # -- where things live -------------------------------------------------------------------------------

    @property
    def model_repository(self) -> Path:
        return self.models_dir if self.models_dir is not None else self.data_dir / "models"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def job_db(self) -> Path:
        return self.data_dir / "jobs.db"

    @property
    def replica_urls(self) -> list[str]:
        return [url.strip().rstrip("/") for url in self.tfaas_replicas.split(",") if url.strip()]

    @property
    def job_store(self) -> Path | str:
        """What ``JobStore`` opens: the embedded SQLite file, or the shared database's URL."""
        return self.store_url or self.job_db

    @property
    def queue_db(self) -> Path:
        return self.data_dir / "queue.db"
