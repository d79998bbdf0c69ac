"""Models across machines: the workers upload each checked bundle to every TFaaS replica over its API.

When ``tfaas_replicas`` is set, a succeeded job's model does not stop at the worker's own repository. The job
store hands out its version (``JobStore.publish_version``, one number for every replica) and queues one
delivery per replica; every worker runs a ``Deliverer`` that takes due deliveries from the store and posts the
job's bundle archive to ``REPLICA/upload?name=MODEL`` with a service token from the IdP's client-credentials
grant (TFaaS lets that identity publish into every user's namespace: ``auth.publisher_subs``).

Versions stay monotonic and equal across replicas because each replica receives a model's versions one after
the other, in the store's order (a version waits while an earlier one to the same replica is pending), and
TFaaS numbers each upload as the next version: the number it answers must be the store's, or the delivery is
recorded as refused with both numbers. A replica that is down is retried with exponential backoff (1 s
doubling up to ``delivery_backoff_max_s``), so it catches up when it returns, in order.

Both the token request and the uploads verify TLS against ``auth.ca_bundle`` when it is set (the CA file the
services already use for a private issuer, servicecore.auth), else against the system store.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import requests

from appliance.server.settings import Settings
from appliance.server.store import Delivery, JobStore

log = logging.getLogger(__name__)

LEASE_S = 300.0  # a delivery taken by a worker that dies is taken again by another after this
IDLE_WAIT_S = 0.5
TOKEN_MARGIN_S = 30.0  # a token this close to its expiry is renewed first
UPLOAD_TIMEOUT_S = 300.0


class DeliveryError(RuntimeError):
    """An upload that did not go through; ``permanent`` when trying again cannot help."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def tls_verify(settings: Settings) -> str | bool:
    """What requests verifies TLS with: the services' ``auth.ca_bundle``, else the system store."""
    return settings.auth_settings.ca_bundle or True


class ServiceToken:
    """The workers' access token from the client-credentials grant, reused until shortly before it expires."""

    def __init__(self, settings: Settings, session: requests.Session) -> None:
        self.settings = settings
        self.session = session
        # Given on every call: a Session's own ``verify`` loses to $REQUESTS_CA_BUNDLE, a call's does not.
        self.verify = tls_verify(settings)
        self._token: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()

    def get(self) -> str:
        with self._lock:
            if self._token is None or time.time() > self._expires - TOKEN_MARGIN_S:
                self._token, lifetime = self._fetch()
                self._expires = time.time() + lifetime
            return self._token

    def forget(self) -> None:
        with self._lock:
            self._token = None

    def _fetch(self) -> tuple[str, float]:
        issuer = self.settings.delivery_issuer.rstrip("/")
        try:
            discovery = self.session.get(
                f"{issuer}/.well-known/openid-configuration", timeout=30, verify=self.verify
            )
            discovery.raise_for_status()
            form = {"grant_type": "client_credentials"}
            if self.settings.delivery_audience:
                form["audience"] = self.settings.delivery_audience
            answer = self.session.post(
                discovery.json()["token_endpoint"],
                data=form,
                auth=(self.settings.delivery_client_id, self.settings.delivery_client_secret),
                timeout=30,
                verify=self.verify,
            )
        except (requests.RequestException, ValueError, KeyError) as err:
            raise DeliveryError(f"no service token from {issuer}: {err}") from None
        if answer.status_code != 200:
            raise DeliveryError(
                f"the issuer refused the service client ({answer.status_code}): {answer.text[:200]}"
            )
        body = answer.json()
        return body["access_token"], float(body.get("expires_in", 300))


class Deliverer:
    """Takes due deliveries from the store, one at a time, and uploads them."""

    def __init__(self, settings: Settings, store: JobStore) -> None:
        self.settings = settings
        self.store = store
        self.session = requests.Session()
        self.token = ServiceToken(settings, self.session)

    def run_once(self) -> Delivery | None:
        """Deliver one due delivery, if there is one; returns it (as it was taken)."""
        delivery = self.store.claim_delivery(LEASE_S)
        if delivery is None:
            return None
        try:
            self.upload(delivery)
        except DeliveryError as err:
            retry = (
                None if err.permanent else min(self.settings.delivery_backoff_max_s, 2.0**delivery.attempts)
            )
            self.store.delivery_failed(delivery.id, str(err), retry)
            log.warning(
                "%s version %d to %s: %s%s",
                delivery.model,
                delivery.version,
                delivery.replica,
                err,
                "" if retry is None else f"; again in {retry:.0f} s",
            )
        else:
            self.store.delivery_done(delivery.id)
            log.info("%s version %d delivered to %s", delivery.model, delivery.version, delivery.replica)
        return delivery

    def upload(self, delivery: Delivery) -> None:
        archive = Path(delivery.archive)
        try:
            body = archive.read_bytes()
        except OSError as err:
            raise DeliveryError(f"the bundle archive cannot be read: {err}", permanent=True) from None
        for attempt in range(2):  # a second time with a fresh token, should the first one have expired
            try:
                answer = self.session.post(
                    f"{delivery.replica}/upload",
                    params={"name": delivery.model},
                    data=body,
                    headers={
                        "Authorization": f"Bearer {self.token.get()}",
                        "Content-Type": "application/gzip",
                    },
                    timeout=UPLOAD_TIMEOUT_S,
                    verify=self.token.verify,
                )
            except requests.RequestException as err:
                raise DeliveryError(f"replica unreachable: {err.__class__.__name__}") from None
            if answer.status_code == 401 and attempt == 0:
                self.token.forget()
                continue
            break
        if answer.status_code >= 500 or answer.status_code in (401, 408, 429):
            raise DeliveryError(f"replica answered {answer.status_code}: {answer.text[:200]}")
        if answer.status_code != 201:
            raise DeliveryError(
                f"replica refused the bundle ({answer.status_code}): {answer.text[:300]}", True
            )
        given = answer.json().get("version")
        if given != delivery.version:
            raise DeliveryError(
                f"replica is out of step: it numbered the upload {given}, the store's version is "
                f"{delivery.version} (was it changed by hand?)",
                permanent=True,
            )

    def start(self, stop: threading.Event) -> threading.Thread:
        """Deliver on a daemon thread until ``stop`` is set."""

        def loop() -> None:
            while not stop.is_set():
                try:
                    delivered = self.run_once()
                except Exception:  # the store may be briefly unreachable: try again shortly
                    log.exception("delivery failed")
                    delivered = None
                if delivered is None:
                    stop.wait(IDLE_WAIT_S)

        thread = threading.Thread(target=loop, name="mlaas4hep-delivery", daemon=True)
        thread.start()
        return thread
