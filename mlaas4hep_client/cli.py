"""``mlaas4hep-client``: the user's command line for the appliance, speaking only its HTTP APIs.

Tokens come, first found wins, from ``--token``, ``$BEARER_TOKEN``, ``$BEARER_TOKEN_FILE``, an oidc-agent
account (``--oidc-agent ACCOUNT`` runs ``oidc-token``), the client-credentials grant (``--client-secret``: for
scripts), or the OAuth2 device-code flow (for people: open the printed URL and enter the code). Tokens from
the two OAuth2 flows are cached (``~/.cache/mlaas4hep-client/tokens.json``, mode 0600) and refreshed.

    mlaas4hep-client token                      print a token, e.g. for curl
    mlaas4hep-client submit workflow.json       upload the local files it names, then submit [--follow]
    mlaas4hep-client follow JOB [--logs]        its progress until it ends (exit 1 unless it succeeded)
    mlaas4hep-client download JOB [-o DIR]      the trained bundle (tar.gz) and its plots
    mlaas4hep-client jobs [--state S] | cancel JOB
    mlaas4hep-client predict MODEL rows.csv     predictions from TFaaS (JSON or CSV rows)
    mlaas4hep-client models list | delete NAME
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

import requests
from oauthlib.oauth2 import BackendApplicationClient, DeviceClient, OAuth2Error
from requests_oauthlib import OAuth2Session

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


# -- tokens ----------------------------------------------------------------------------------------------


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


# -- the services' HTTP APIs -----------------------------------------------------------------------------


class Api:
    """Authenticated calls to one service; errors become ``ClientError`` with the service's message."""

    def __init__(self, base: str | None, what: str, tokens: TokenSource) -> None:
        if not base:
            flag = "--server" if what == "server" else "--tfaas"
            raise ClientError(f"say where the {what} is: {flag} URL or ${ENV_PREFIX}{what.upper()}")
        self.base = base.rstrip("/")
        self.tokens = tokens

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.tokens.bearer()}", **kwargs.pop("headers", {})}
        options = self.tokens.options
        try:
            response = requests.request(
                method,
                f"{self.base}{path}",
                headers=headers,
                timeout=options.timeout_s,
                verify=options.verify,
                **kwargs,
            )
        except requests.RequestException as err:
            raise ClientError(f"{method} {self.base}{path} failed: {err}") from None
        if response.status_code >= 400:
            raise HttpError(
                response.status_code, f"{method} {path}: HTTP {response.status_code}: {_error_text(response)}"
            )
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise ClientError(f"{method} {path}: the answer is not JSON") from None


def _error_text(response: requests.Response) -> str:
    with contextlib.suppress(ValueError):
        body = response.json()
        if isinstance(body, dict) and "error" in body:
            return str(body["error"])
    return response.text[:500] or response.reason


def read_rows(path: Path) -> dict[str, Any]:
    """Rows to predict from a JSON file (a TFaaS/TF Serving request body, or a list of rows) or a CSV file.

    A CSV with a header of branch names becomes raw-branch rows; without a header, normalised vectors.
    """
    try:
        text = path.read_text()
    except OSError as err:
        raise ClientError(f"cannot read {str(path)!r}: {err.strerror}") from None
    if path.suffix.lower() == ".csv":
        rows = [row for row in csv.reader(text.splitlines()) if row]
        if not rows:
            raise ClientError(f"{path} has no rows")
        try:
            if _is_header(rows[0]):
                names = [name.strip() for name in rows[0]]
                return {
                    "instances": [{n: float(v) for n, v in zip(names, row, strict=True)} for row in rows[1:]]
                }
            return {"instances": [[float(v) for v in row] for row in rows]}
        except ValueError as err:
            raise ClientError(
                f"{path}: every row must have the header's width and numbers only ({err})"
            ) from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as err:
        raise ClientError(f"{path} is not valid JSON: {err}") from None
    if isinstance(body, list):
        return {"instances": body}
    if isinstance(body, dict) and "values" in body:  # an original TFaaS /json body: one row
        return {"instances": [body["values"]]}
    if isinstance(body, dict) and ("instances" in body or "inputs" in body):
        return body
    raise ClientError(f"{path}: expected a list of rows, or an object with 'instances', 'inputs' or 'values'")


def _is_header(row: Sequence[str]) -> bool:
    try:
        [float(v) for v in row]
    except ValueError:
        return True
    return False


def cmd_token(args: argparse.Namespace, tokens: TokenSource) -> int:
    print(tokens.bearer())
    return 0


def cmd_predict(args: argparse.Namespace, tokens: TokenSource) -> int:
    api = Api(tokens.options.tfaas, "tfaas", tokens)
    path = f"/v1/models/{args.model}" + (f"/versions/{args.version}" if args.version else "") + ":predict"
    print(json.dumps(api.json("POST", path, json=read_rows(Path(args.rows)))))
    return 0


def cmd_models_list(args: argparse.Namespace, tokens: TokenSource) -> int:
    print(json.dumps(Api(tokens.options.tfaas, "tfaas", tokens).json("GET", "/models"), indent=2))
    return 0


def cmd_models_delete(args: argparse.Namespace, tokens: TokenSource) -> int:
    query = {"version": args.version} if args.version else None
    answer = Api(tokens.options.tfaas, "tfaas", tokens).json("DELETE", f"/delete/{args.name}", params=query)
    print(json.dumps(answer))
    return 0


# -- workflows ---------------------------------------------------------------------------------------------


@dataclass
class PreparedWorkflow:
    """A workflow request whose local files are renamed to their names in ``archive`` (empty: none local)."""

    body: dict[str, Any]
    archive: dict[str, Path]  # name in the upload -> local file


def prepare_workflow(path: Path) -> PreparedWorkflow:
    """Read a workflow JSON (the body of ``POST /jobs``; docs/server.md) and find the local files it names.

    A string value of ``files``, ``labels``, ``model``, ``params`` or ``preproc`` that names an existing file
    (relative to the workflow's folder) is uploaded; so is each entry of ``files`` (a list, or a local list
    file, one entry a line) that is a local file. URLs and anything else go to the server unchanged: it
    checks them (a label branch name, a ``redirector`` path, a file of an earlier ``upload``).
    """
    try:
        body = json.loads(path.read_text())
    except OSError as err:
        raise ClientError(f"cannot read the workflow {str(path)!r}: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise ClientError(f"the workflow {str(path)!r} is not valid JSON: {err}") from None
    if not isinstance(body, dict):
        raise ClientError(f"the workflow {str(path)!r} must hold a JSON object")
    base = path.resolve().parent
    archive: dict[str, Path] = {}

    def upload(value: str) -> str:
        local = _local_file(base, value)
        if local is None:
            return value
        name = _archive_name(base, local, len(archive))
        archive.setdefault(name, local)
        return name

    files = body.get("files")
    if isinstance(files, str) and _local_file(base, files) is not None:
        files = _list_file_entries(_local_file(base, files))  # type: ignore[arg-type]
    if isinstance(files, list):
        body["files"] = [upload(entry) if isinstance(entry, str) else entry for entry in files]
    for key in FILE_KEYS[1:]:
        if isinstance(body.get(key), str):
            body[key] = upload(body[key])
    return PreparedWorkflow(body, archive)


def _local_file(base: Path, value: str) -> Path | None:
    if not value.strip() or "://" in value or "\n" in value:
        return None
    path = (base / value.strip()).resolve()
    return path if path.is_file() else None


def _archive_name(base: Path, local: Path, index: int) -> str:
    """The workflow's folder is the upload's root; files outside it go to ``external/<n>/``."""
    try:
        return PurePosixPath(*local.relative_to(base).parts).as_posix()
    except ValueError:
        return f"external/{index}/{local.name}"


def _list_file_entries(path: Path) -> list[str]:
    lines = path.read_text(errors="replace").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def write_archive(files: Mapping[str, Path], out: IO[bytes]) -> None:
    """A tar.gz of regular files only (what the server's safe extraction accepts)."""
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, path in files.items():
            info = tar.gettarinfo(str(path), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o644
            with path.open("rb") as data:
                tar.addfile(info, data)


def submit_workflow(api: Api, prepared: PreparedWorkflow) -> dict[str, Any]:
    """Upload the local files (``POST /upload``, streamed from a temporary tar.gz), then ``POST /jobs``."""
    body = dict(prepared.body)
    if prepared.archive:
        with tempfile.TemporaryFile() as archive:
            write_archive(prepared.archive, archive)
            archive.seek(0)
            uploaded = api.json("POST", "/upload", data=archive, headers={"Content-Type": "application/gzip"})
        body["upload"] = uploaded["upload"]
    return api.json("POST", "/jobs", json=body)


def describe_job(job: Mapping[str, Any]) -> str:
    """One line on a job's state and progress, for people."""
    progress = job.get("progress") or {}
    parts = [f"{job.get('id', '?')} {job.get('state', '?')}"]
    if progress.get("stage"):
        parts.append(f"stage {progress['stage']}")
    if progress.get("epochs"):
        parts.append(f"epoch {progress.get('epoch', 0)}/{progress['epochs']}")
    if progress.get("events_read") is not None:
        rate = progress.get("events_per_s")
        parts.append(f"{progress['events_read']} events" + (f" ({rate:.0f}/s)" if rate else ""))
    if progress.get("loss") is not None:
        parts.append(f"loss {progress['loss']:.4g}")
    if job.get("error"):
        parts.append(f"error: {job['error']}")
    return ", ".join(parts)


def follow_job(
    api: Api,
    job_id: str,
    interval_s: float = 2.0,
    logs: bool = False,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Poll ``GET /jobs/<id>`` until the job ends, saying each new progress line (and log text); the job."""
    last = None
    offset = 0
    while True:
        job = api.json("GET", f"/jobs/{job_id}")
        if logs:
            response = api.request("GET", f"/jobs/{job_id}/logs", params={"offset": offset})
            if response.content:
                say(response.content.decode(errors="replace").rstrip("\n"))
            offset = int(response.headers.get("X-Log-Offset", offset + len(response.content)))
        line = describe_job(job)
        if line != last:
            say(line)
            last = line
        if job.get("state") in FINAL_STATES:
            return job
        time.sleep(interval_s)


def download_results(api: Api, job_id: str, folder: Path, plots: bool = True) -> list[Path]:
    """The job's bundle as ``<model name>.tar.gz`` and its plots, written whole or not at all."""
    job = api.json("GET", f"/jobs/{job_id}")
    if job.get("state") != SUCCEEDED:
        raise ClientError(f"job {job_id} is {job.get('state')}: only a succeeded job has a model to download")
    folder.mkdir(parents=True, exist_ok=True)
    name = _safe_file_name(str(job.get("model_name") or job_id))
    written = [_download(api, f"/jobs/{job_id}/model", folder / f"{name}.tar.gz")]
    if plots:
        for plot in PLOTS:
            target = folder / f"{name}.{plot}.png"
            try:
                written.append(_download(api, f"/jobs/{job_id}/plots/{plot}.png", target))
            except HttpError as err:
                if err.status != 404:  # a job may make no plot of a kind (no loss curve without epochs)
                    raise
    return written


def _safe_file_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "._-" else "_" for c in name).strip(".")
    return cleaned or "model"


def _download(api: Api, path: str, target: Path) -> Path:
    response = api.request("GET", path, stream=True)
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}-")
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in response.iter_content(DOWNLOAD_CHUNK):
                out.write(chunk)
        Path(temporary).chmod(0o644)
        Path(temporary).replace(target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    finally:
        response.close()
    return target


# -- commands --------------------------------------------------------------------------------------------


def _server(tokens: TokenSource) -> Api:
    return Api(tokens.options.server, "server", tokens)


def _exit_status(job: Mapping[str, Any]) -> int:
    return 0 if job.get("state") == SUCCEEDED else 1


def cmd_submit(args: argparse.Namespace, tokens: TokenSource) -> int:
    prepared = prepare_workflow(Path(args.workflow))
    if args.name:
        prepared.body["name"] = args.name
    api = _server(tokens)
    job = submit_workflow(api, prepared)
    print(json.dumps(job))
    if not args.follow:
        return 0
    return _exit_status(follow_job(api, job["id"], args.interval, args.logs, say=_stderr))


def cmd_follow(args: argparse.Namespace, tokens: TokenSource) -> int:
    job = follow_job(_server(tokens), args.job, args.interval, args.logs)
    return _exit_status(job)


def cmd_download(args: argparse.Namespace, tokens: TokenSource) -> int:
    for path in download_results(_server(tokens), args.job, Path(args.output), plots=not args.no_plots):
        print(path)
    return 0


def cmd_jobs(args: argparse.Namespace, tokens: TokenSource) -> int:
    query = {"state": args.state} if args.state else None
    for job in _server(tokens).json("GET", "/jobs", params=query)["jobs"]:
        print(f"{describe_job(job)}  {job.get('model_name', '')}")
    return 0


def cmd_cancel(args: argparse.Namespace, tokens: TokenSource) -> int:
    print(describe_job(_server(tokens).json("DELETE", f"/jobs/{args.job}")))
    return 0


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    env = os.environ
    parser = argparse.ArgumentParser(
        prog="mlaas4hep-client",
        description="Train on the MLaaS4HEP appliance and get predictions from TFaaS, with OIDC tokens.",
    )
    parser.add_argument("--server", default=env.get(f"{ENV_PREFIX}SERVER"), help="MLaaS4HEP URL (:4433)")
    parser.add_argument("--tfaas", default=env.get(f"{ENV_PREFIX}TFAAS"), help="TFaaS URL (:8081)")
    parser.add_argument("--issuer", default=env.get(f"{ENV_PREFIX}ISSUER", DEFAULT_ISSUER))
    parser.add_argument("--client-id", default=env.get(f"{ENV_PREFIX}CLIENT_ID"))
    parser.add_argument(
        "--client-secret",
        default=env.get(f"{ENV_PREFIX}CLIENT_SECRET"),
        help="use the client-credentials grant (for scripts); better set $MLAAS4HEP_CLIENT_SECRET",
    )
    parser.add_argument(
        "--flow",
        choices=["auto", "device", "client-credentials"],
        default=env.get(f"{ENV_PREFIX}FLOW", "auto"),
        help="how to log in (auto: client credentials when a client secret is given, else device code)",
    )
    parser.add_argument("--audience", default=env.get(f"{ENV_PREFIX}AUDIENCE", DEFAULT_AUDIENCE))
    parser.add_argument("--scope", default=env.get(f"{ENV_PREFIX}SCOPE", DEFAULT_SCOPE))
    parser.add_argument("--token", help="a bearer token to use as is (also $BEARER_TOKEN)")
    parser.add_argument("--oidc-agent", metavar="ACCOUNT", default=env.get(f"{ENV_PREFIX}OIDC_AGENT"))
    parser.add_argument(
        "--ca-bundle", default=env.get(f"{ENV_PREFIX}CA_BUNDLE"), help="CA file (self-signed)"
    )
    parser.add_argument("--cache", type=Path, default=None, help="token cache file")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per HTTP request")
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("token", help="print a bearer token").set_defaults(run=cmd_token)

    submit = commands.add_parser("submit", help="upload a workflow's local files and submit it")
    submit.add_argument("workflow", help="JSON workflow (docs/server.md); local files it names are uploaded")
    submit.add_argument("--name", help="the model's name (overrides the workflow's)")
    submit.add_argument("--follow", action="store_true", help="then follow the job until it ends")
    follow = commands.add_parser(
        "follow", help="print a job's progress until it ends; exit 1 unless it succeeded"
    )
    follow.add_argument("job")
    for command in (submit, follow):
        command.add_argument("--interval", type=float, default=2.0, help="seconds between polls")
        command.add_argument("--logs", action="store_true", help="print the job's log as it grows")
    submit.set_defaults(run=cmd_submit)
    follow.set_defaults(run=cmd_follow)

    download = commands.add_parser("download", help="a succeeded job's bundle (tar.gz) and plots")
    download.add_argument("job")
    download.add_argument("-o", "--output", default=".", help="folder to write into (default: here)")
    download.add_argument("--no-plots", action="store_true")
    download.set_defaults(run=cmd_download)

    jobs = commands.add_parser("jobs", help="your jobs, newest first")
    jobs.add_argument("--state", choices=["queued", "running", *sorted(FINAL_STATES)])
    jobs.set_defaults(run=cmd_jobs)
    cancel = commands.add_parser("cancel", help="cancel a queued or running job")
    cancel.add_argument("job")
    cancel.set_defaults(run=cmd_cancel)

    predict = commands.add_parser("predict", help="predictions from TFaaS for rows in a JSON or CSV file")
    predict.add_argument("model")
    predict.add_argument(
        "rows", help="JSON (rows, instances, or a TFaaS body) or CSV (header = branch names)"
    )
    predict.add_argument("--version", type=int)
    predict.set_defaults(run=cmd_predict)

    models = commands.add_parser("models", help="list or delete models").add_subparsers(
        dest="action", required=True
    )
    models.add_parser("list").set_defaults(run=cmd_models_list)
    delete = models.add_parser("delete")
    delete.add_argument("name")
    delete.add_argument("--version", type=int)
    delete.set_defaults(run=cmd_models_delete)
    return parser


def options_from(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Options:
    return Options(
        server=args.server,
        tfaas=args.tfaas,
        issuer=args.issuer,
        client_id=args.client_id,
        client_secret=args.client_secret,
        flow=args.flow,
        audience=args.audience or None,
        scope=args.scope,
        token=args.token,
        oidc_agent=args.oidc_agent,
        ca_bundle=args.ca_bundle,
        cache=args.cache or default_cache(),
        timeout_s=args.timeout,
        environ=dict(os.environ if environ is None else environ),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args, TokenSource(options_from(args)))
    except ClientError as err:
        print(f"mlaas4hep-client: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
