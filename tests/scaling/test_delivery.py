"""Models across machines: the workers' deliverer uploads a checked bundle to two real TFaaS replicas
(gunicorn, OIDC auth against the test identity provider) with a client-credentials service token.

One replica is stopped while the model is published and started again on its port: it gets the version later,
in order, through the deliverer's backoff. Both replicas then serve the same version numbers, the store's. The
service identity may publish into a user's namespace; an ordinary user still may not publish into another's.
Over TLS, an issuer and a replica that only a private CA vouches for are reached with ``auth.ca_bundle``.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from appliance.server.delivery import Deliverer
from appliance.server.settings import Settings
from appliance.server.store import DELIVERED, PENDING, JobStore
from tests.auth.idp import IdentityProvider, User, self_signed_pair
from tests.scaling.servers import REPO, tfaas_replica
from tests.server.conftest import wait_until
from tests.support.processes import free_port, running
from tests.tfaas import bundles

pytestmark = pytest.mark.slow
AUDIENCE = "tfaas-client"
MODEL = "alice.small"
ALICE = User("alice-sub", "alice")
BOB = User("bob-sub", "bob")
SERVICE = User("svc-mlaas4hep-workers", "mlaas4hep-publisher")
SECRET = "worker-client-secret"


@pytest.fixture(scope="module")
def idp() -> Iterator[IdentityProvider]:
    with IdentityProvider.running() as provider:
        provider.add_client("mlaas4hep-workers", SECRET, SERVICE)
        yield provider


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> list[Path]:
    """Two versions of alice.small, each the gzipped tar a job leaves (top folder: the model name)."""
    base = tmp_path_factory.mktemp("bundles")
    made = []
    for seed in (1, 2):
        bundle = bundles.write_bundle(
            base / f"v{seed}", bundles.mlp(4, (8,), 2, seed=seed), MODEL, 4, ["a", "b"]
        )
        archive = base / f"model{seed}.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(bundle, arcname=MODEL)
        made.append(archive)
    return made


def replica(
    idp: IdentityProvider, models: Path, port: int, log: Path
) -> contextlib.AbstractContextManager[str]:
    return tfaas_replica(idp, models, port, log, AUDIENCE, [SERVICE.sub])


def served_version(url: str, token: str, model: str = MODEL) -> int | None:
    answer = requests.get(f"{url}/params/{model}", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    return answer.json().get("version") if answer.status_code == 200 else None


def test_every_replica_gets_each_version_in_order_one_after_a_restart(idp, archives, tmp_path):
    ports = [free_port(), free_port()]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    settings = Settings.load(
        environ={
            "MLAAS4HEP_DATA_DIR": str(tmp_path / "data"),
            "MLAAS4HEP_TFAAS_REPLICAS": ",".join(urls),
            "MLAAS4HEP_DELIVERY_ISSUER": idp.issuer,
            "MLAAS4HEP_DELIVERY_CLIENT_ID": "mlaas4hep-workers",
            "MLAAS4HEP_DELIVERY_CLIENT_SECRET": SECRET,
            "MLAAS4HEP_DELIVERY_AUDIENCE": AUDIENCE,
            "MLAAS4HEP_DELIVERY_BACKOFF_MAX_S": "2",
        }
    )
    store = JobStore(tmp_path / "jobs.db")
    reader = idp.mint(ALICE, AUDIENCE)
    stop = threading.Event()
    with replica(idp, tmp_path / "r0", ports[0], tmp_path / "r0.log") as first:
        with replica(idp, tmp_path / "r1", ports[1], tmp_path / "r1-a.log"):
            pass  # replica 1 ran, and is down when the model is published
        assert store.publish_version(MODEL, "a" * 32, str(archives[0]), urls) == 1
        Deliverer(settings, store).start(stop)
        wait_until(lambda: served_version(first, reader) == 1, 60)
        wait_until(lambda: any(d.attempts >= 2 for d in store.list_deliveries(state=PENDING)), 30)
        assert store.publish_version(MODEL, "b" * 32, str(archives[1]), urls) == 2
        wait_until(
            lambda: (urls[0], 2) in {(d.replica, d.version) for d in store.list_deliveries(state=DELIVERED)},
            60,
        )
        assert served_version(first, reader) == 2
        waiting = {(d.replica, d.version) for d in store.list_deliveries(state=PENDING)}
        assert waiting == {(urls[1], 1), (urls[1], 2)}  # version 2 waits behind version 1
        with replica(idp, tmp_path / "r1", ports[1], tmp_path / "r1-b.log") as second:
            wait_until(lambda: not store.list_deliveries(state=PENDING), 60)
            assert served_version(second, reader) == 2
            versions = requests.get(
                f"{second}/models", headers={"Authorization": f"Bearer {reader}"}, timeout=30
            )
            assert versions.status_code == 200
        stop.set()
    delivered = store.list_deliveries(state=DELIVERED)
    assert sorted((d.replica, d.version) for d in delivered) == sorted((u, v) for u in urls for v in (1, 2))
    assert all(d.error is None for d in delivered)
    # Each replica's repository holds versions 1 and 2 of the model, numbered as the store numbered them.
    for models in (tmp_path / "r0", tmp_path / "r1"):
        assert sorted(p.name for p in (models / MODEL).iterdir() if not p.name.startswith(".")) == ["1", "2"]
        assert json.loads((models / MODEL / "2" / "params.json").read_text())["version"] == 2
    store.dispose()


def test_only_the_service_identity_publishes_for_others(idp, archives, tmp_path):
    body = archives[0].read_bytes()
    with replica(idp, tmp_path / "r", free_port(), tmp_path / "r.log") as url:

        def upload(user: User, name: str = MODEL) -> requests.Response:
            token = idp.mint(user, AUDIENCE)
            return requests.post(
                f"{url}/upload",
                params={"name": name},
                data=body,
                timeout=120,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/gzip"},
            )

        refused = upload(BOB)
        assert refused.status_code == 403 and "namespace" in refused.json()["error"]
        assert upload(ALICE).status_code == 201  # her own namespace
        answer = upload(SERVICE)
        assert answer.status_code == 201 and answer.json()["version"] == 2
        # A demo header naming the service is no token: the service's right needs a verified one.
        spoofed = requests.post(
            f"{url}/upload",
            params={"name": MODEL},
            data=body,
            timeout=60,
            headers={"X-Forwarded-User": SERVICE.sub, "Content-Type": "application/gzip"},
        )
        assert spoofed.status_code == 401


def test_the_token_and_the_uploads_trust_the_auth_ca_bundle(archives, tmp_path):
    """An https issuer and an https replica whose certificate only a test CA vouches for (not the system
    store): without ``auth.ca_bundle`` the deliverer gets no token; with it, it gets one and uploads."""
    cert, key = self_signed_pair(tmp_path)
    with IdentityProvider.running(tls=(cert, key)) as tls_idp:
        tls_idp.add_client("mlaas4hep-workers", SECRET, SERVICE)
        port = free_port()
        url = f"https://127.0.0.1:{port}"
        auth = {
            "mode": "oidc",
            "issuers": [tls_idp.issuer],
            "audiences": [AUDIENCE],
            "allow_any_user": True,
            "publisher_subs": [SERVICE.sub],
            "ca_bundle": str(cert),
        }
        argv = [
            sys.executable, "-m", "tfaas", "--model-dir", str(tmp_path / "models"), "--port", str(port),
            "--workers", "1",
        ]  # fmt: skip
        env = {
            "TFAAS_AUTH": json.dumps(auth),
            "TFAAS_TLS_CERT": str(cert),
            "TFAAS_TLS_KEY": str(key),
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
        with running(argv, port, tmp_path / "replica.log", env=env, cwd=REPO):

            def deliverer(**auth_settings: str) -> Deliverer:
                environ = {
                    "MLAAS4HEP_DATA_DIR": str(tmp_path / "data"),
                    "MLAAS4HEP_TFAAS_REPLICAS": url,
                    "MLAAS4HEP_DELIVERY_ISSUER": tls_idp.issuer,
                    "MLAAS4HEP_DELIVERY_CLIENT_ID": "mlaas4hep-workers",
                    "MLAAS4HEP_DELIVERY_CLIENT_SECRET": SECRET,
                    "MLAAS4HEP_DELIVERY_AUDIENCE": AUDIENCE,
                    "MLAAS4HEP_DELIVERY_BACKOFF_MAX_S": "1",
                    "MLAAS4HEP_AUTH": json.dumps(auth_settings),
                }
                return Deliverer(Settings.load(environ=environ), store)

            store = JobStore(tmp_path / "jobs.db")
            assert store.publish_version(MODEL, "a" * 32, str(archives[0]), [url]) == 1
            assert deliverer().run_once() is not None
            (refused,) = store.list_deliveries(state=PENDING)
            assert "no service token" in refused.error and "CERTIFICATE_VERIFY_FAILED" in refused.error

            trusting = deliverer(ca_bundle=str(cert))
            wait_until(lambda: trusting.run_once() is not None, 30)  # once the backoff has passed
            (delivered,) = store.list_deliveries(state=DELIVERED)
            assert delivered.error is None
            reader = tls_idp.mint(ALICE, AUDIENCE)
            answer = requests.get(
                f"{url}/params/{MODEL}",
                headers={"Authorization": f"Bearer {reader}"},
                timeout=30,
                verify=str(cert),
            )
            assert answer.status_code == 200 and answer.json()["version"] == 1
            store.dispose()
