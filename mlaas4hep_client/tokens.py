"""Bearer tokens for the client: given, from oidc-agent, client credentials or the device-code flow, cached
and refreshed.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import requests
from oauthlib.oauth2 import BackendApplicationClient, DeviceClient, OAuth2Error
from requests_oauthlib import OAuth2Session

from mlaas4hep_client.options import ENV_PREFIX, EXPIRY_MARGIN_S, ClientError, Options


class TokenSource:
    """Finds a bearer token for the configured issuer, client and audience."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self._discovery: dict[str, Any] | None = None

    def bearer(self) -> str:
        opts = self.options
        if opts.token:
            return opts.token.strip()
        if opts.environ.get("BEARER_TOKEN", "").strip():
            return opts.environ["BEARER_TOKEN"].strip()
        if opts.environ.get("BEARER_TOKEN_FILE"):
            return _read_token_file(Path(opts.environ["BEARER_TOKEN_FILE"]))
        if opts.oidc_agent:
            return self._oidc_agent(opts.oidc_agent)
        if not opts.client_id:
            raise ClientError(
                "no token: give --token, set BEARER_TOKEN, use --oidc-agent ACCOUNT, or give --client-id "
                f"(or ${ENV_PREFIX}CLIENT_ID) to log in at {opts.issuer}"
            )
        cached = self._cache_read()
        if cached and _fresh(cached):
            return cached["access_token"]
        token = None
        if cached and cached.get("refresh_token"):
            token = self._refresh(cached)
        if token is None:
            token = (
                self._client_credentials() if self._flow() == "client-credentials" else self._device_flow()
            )
        self._cache_write(token)
        return token["access_token"]

    def _flow(self) -> str:
        if self.options.flow == "auto":
            return "client-credentials" if self.options.client_secret else "device"
        if self.options.flow == "client-credentials" and not self.options.client_secret:
            raise ClientError("the client-credentials flow needs --client-secret or $MLAAS4HEP_CLIENT_SECRET")
        return self.options.flow

    def _oidc_agent(self, account: str) -> str:
        argv = ["oidc-token", account]
        if self.options.audience:
            argv.append(f"--aud={self.options.audience}")
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        except FileNotFoundError:
            raise ClientError("oidc-token is not installed (it comes with oidc-agent)") from None
        if done.returncode != 0 or not done.stdout.strip():
            raise ClientError(f"{shlex.join(argv)} failed: {done.stderr.strip() or done.stdout.strip()}")
        return done.stdout.strip()

    def _endpoint(self, name: str) -> str:
        if self._discovery is None:
            url = self.options.issuer.rstrip("/") + "/.well-known/openid-configuration"
            try:
                response = requests.get(url, timeout=self.options.timeout_s, verify=self.options.verify)
                response.raise_for_status()
                self._discovery = response.json()
            except (requests.RequestException, ValueError) as err:
                raise ClientError(f"cannot read the issuer's discovery document {url}: {err}") from None
        value = self._discovery.get(name)
        if not isinstance(value, str):
            raise ClientError(f"the issuer {self.options.issuer} offers no {name}")
        return value

    def _extra(self) -> dict[str, str]:
        # IAM (and Keycloak with the audience mapper) take the wanted audience as a token-request parameter.
        return {"audience": self.options.audience} if self.options.audience else {}

    def _client_credentials(self) -> dict[str, Any]:
        opts = self.options
        session = OAuth2Session(client=BackendApplicationClient(client_id=opts.client_id), scope=opts.scope)
        try:
            return _granted(
                session.fetch_token,
                self._endpoint("token_endpoint"),
                client_id=opts.client_id,
                client_secret=opts.client_secret,
                include_client_id=True,
                scope=opts.scope,
                verify=opts.verify,
                timeout=opts.timeout_s,
                **self._extra(),
            )
        except (OAuth2Error, requests.RequestException) as err:
            raise ClientError(f"client-credentials login failed: {_oauth_message(err)}") from None

    def _device_flow(self) -> dict[str, Any]:
        opts = self.options
        form = {"client_id": opts.client_id, "scope": opts.scope, **self._extra()}
        auth = (opts.client_id, opts.client_secret) if opts.client_secret else None
        try:
            response = requests.post(
                self._endpoint("device_authorization_endpoint"),
                data=form,
                auth=auth,
                timeout=opts.timeout_s,
                verify=opts.verify,
            )
            grant = response.json()
        except (requests.RequestException, ValueError) as err:
            raise ClientError(f"device authorization failed: {err}") from None
        if response.status_code != 200 or "device_code" not in grant:
            raise ClientError(f"device authorization refused: {grant.get('error', response.status_code)}")
        uri = grant.get("verification_uri_complete") or grant["verification_uri"]
        opts.notify(f"To log in, open {uri} and enter the code {grant['user_code']}")
        session = OAuth2Session(client=DeviceClient(client_id=opts.client_id), scope=opts.scope)
        interval = float(grant.get("interval", 5))
        deadline = time.monotonic() + float(grant.get("expires_in", 600))
        token_url = self._endpoint("token_endpoint")
        while time.monotonic() < deadline:
            try:
                return _granted(
                    session.fetch_token,
                    token_url,
                    device_code=grant["device_code"],
                    client_secret=opts.client_secret,
                    include_client_id=True,
                    verify=opts.verify,
                    timeout=opts.timeout_s,
                )
            except OAuth2Error as err:
                if err.error == "slow_down":
                    interval += 5
                elif err.error != "authorization_pending":
                    raise ClientError(f"device login failed: {_oauth_message(err)}") from None
            except requests.RequestException as err:
                raise ClientError(f"device login failed: {err}") from None
            time.sleep(interval)
        raise ClientError("device login timed out: the code was not entered in time")

    def _refresh(self, cached: dict[str, Any]) -> dict[str, Any] | None:
        opts = self.options
        session = OAuth2Session(client_id=opts.client_id, token=cached)
        try:
            token = _granted(
                session.refresh_token,
                self._endpoint("token_endpoint"),
                refresh_token=cached["refresh_token"],
                auth=(opts.client_id, opts.client_secret) if opts.client_secret else None,
                client_id=None if opts.client_secret else opts.client_id,
                verify=opts.verify,
                timeout=opts.timeout_s,
            )
        except (OAuth2Error, requests.RequestException):
            return None  # an expired or revoked refresh token: log in again
        token.setdefault("refresh_token", cached["refresh_token"])
        return token

    def _cache_key(self) -> str:
        opts = self.options
        return f"{opts.issuer.rstrip('/')} {opts.client_id} {opts.audience or ''} {self._flow()}"

    def _cache_all(self) -> dict[str, Any]:
        try:
            data = json.loads(self.options.cache.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _cache_read(self) -> dict[str, Any] | None:
        entry = self._cache_all().get(self._cache_key())
        return entry if isinstance(entry, dict) and "access_token" in entry else None

    def _cache_write(self, token: Mapping[str, Any]) -> None:
        data = self._cache_all()
        data[self._cache_key()] = dict(token)
        path = self.options.cache
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tokens-")  # mode 0600
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(data, out)
            Path(temporary).replace(path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def _granted(call: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """The token from an oauthlib call; a server granting fewer scopes than asked (IAM does) is fine."""
    try:
        return call(*args, **kwargs)
    except Warning as changed:  # oauthlib raises its scope-changed Warning, with the token attached
        token = getattr(changed, "token", None)
        if token is None:
            raise
        return dict(token)


def _fresh(token: Mapping[str, Any]) -> bool:
    expires_at = token.get("expires_at")
    return isinstance(expires_at, int | float) and expires_at - EXPIRY_MARGIN_S > time.time()


def _read_token_file(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as err:
        raise ClientError(f"cannot read BEARER_TOKEN_FILE {str(path)!r}: {err.strerror}") from None
    if not token:
        raise ClientError(f"BEARER_TOKEN_FILE {str(path)!r} is empty")
    return token


def _oauth_message(err: Exception) -> str:
    if isinstance(err, OAuth2Error):
        return f"{err.error}: {err.description}" if err.description else str(err.error)
    return str(err)
