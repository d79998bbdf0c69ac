"""What the client is told (flags, environment) and the errors it reports; shared by its modules."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_ISSUER = "https://iam.cloud.infn.it/"
DEFAULT_AUDIENCE = "mlaas4hep"
DEFAULT_SCOPE = "openid profile wlcg.groups offline_access"
ENV_PREFIX = "MLAAS4HEP_"
EXPIRY_MARGIN_S = 60  # a token this close to expiry is renewed before use
SUCCEEDED = "succeeded"
FINAL_STATES = frozenset({SUCCEEDED, "failed", "cancelled"})
PLOTS = ("roc", "loss")
# Workflow keys whose string value may name a local file (files: a list of inputs, one a line).
FILE_KEYS = ("files", "labels", "model", "params", "preproc")
DOWNLOAD_CHUNK = 1 << 20


class ClientError(Exception):
    """Something the user must fix or know about; the command exits with status 2 and this message."""


class HttpError(ClientError):
    """A service answered with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Options:
    server: str | None = None
    tfaas: str | None = None
    issuer: str = DEFAULT_ISSUER
    client_id: str | None = None
    client_secret: str | None = None
    flow: str = "auto"  # "device", "client-credentials", or auto: client credentials when a secret is given
    audience: str | None = DEFAULT_AUDIENCE
    scope: str = DEFAULT_SCOPE
    token: str | None = None
    oidc_agent: str | None = None
    ca_bundle: str | None = None
    cache: Path = field(default_factory=lambda: default_cache())
    timeout_s: float = 60.0
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    notify: Callable[[str], None] = field(default=lambda text: print(text, file=sys.stderr, flush=True))

    @property
    def verify(self) -> str | bool:
        return self.ca_bundle or True


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mlaas4hep-client" / "tokens.json"
