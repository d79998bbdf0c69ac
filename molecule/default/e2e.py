"""End-to-end calls inside the appliance host, through its HTTP APIs only, with tokens of a real OIDC issuer.

The issuer is the test identity provider (tests/auth/idp.py, copied beside this file), started here on the
loopback port the appliance was configured with (its ``oauth2_proxy_issuer_url``); the services fetch its
discovery document and keys themselves. Then, as the appliance's owner:

1. ROOT files into the XRootD origin, and a workflow whose files are root:// URLs through the appliance's
   proxy: ``POST /jobs``;
2. the prototype's way: the workflow files in a tar.gz with ``POST /upload``, then ``POST /submit``;
3. ``mlaas4hep-client submit`` of a workflow with local files (it uploads them itself);
4. each job followed to ``succeeded``; the first job's bundle downloaded and sent to TFaaS ``POST /upload`` (a
   new version); a TFaaS prediction from raw branch values (``POST /json``).

While the jobs run, the process table is watched: every training process must run under a uid of the
worker's ``job_uids`` (never root, never the service user) and in a network namespace other than the host's.

And the access policy as shipped: no token 401, a token of a user outside the policy 403 (both services); with
a shared group, a second member sees 404 for the owner's job and cannot delete the owner's model.
Runs with the appliance's own virtual environment. Exit status 1 names the call that failed.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import requests
from idp import IdentityProvider, User

from appliance.data.synthetic import SyntheticSchema, write_root_file
from mlaas4hep_devtools.e2e import (
    MODEL,
    PARAMS,
    Caller,
    expect,
    expect_refused,
    fail,
    first_events,
    wait_for_params,
)

# The upload paths train too; one short epoch is enough to see them publish.
SMALL_PARAMS = {**PARAMS, "nevts": 2000, "epochs": 1}


def wait_for_job(owner: Caller, api: str, job_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = expect_quiet(f"GET /jobs/{job_id}", owner.get(f"{api}/jobs/{job_id}")).json()
        if job["state"] == "succeeded":
            print(f"GET /jobs/{job_id} -> succeeded ({job['model_name']})", flush=True)
            return job
        if job["state"] in ("failed", "cancelled"):
            logs = owner.get(f"{api}/jobs/{job_id}/logs").text[-4000:]
            fail(f"job {job_id}", detail=f"{json.dumps(job)[:3000]}\n{logs}")
        if time.monotonic() > deadline:
            fail(f"job {job_id}", detail=f"still {job['state']} after {timeout} s")
        time.sleep(2)


def expect_quiet(call: str, response: requests.Response) -> requests.Response:
    if response.status_code != 200:
        fail(call, response)
    return response


class JobProcessWatch:
    """Samples /proc while jobs run: the uid and network namespace of every ``python -m appliance train``.

    Only the training interpreter counts: prlimit, taskset and setpriv before it still run as root, by design.
    """

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.seen: dict[int, tuple[int, str]] = {}  # pid -> (uid, network namespace)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> JobProcessWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        self.thread.join()

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    argv = (entry / "cmdline").read_bytes().split(b"\0")
                    if argv[1:4] != [b"-m", b"appliance", b"train"]:
                        continue
                    uid = entry.stat().st_uid
                    namespace = (entry / "ns" / "net").readlink().name
                except OSError:  # gone meanwhile
                    continue
                self.seen[int(entry.name)] = (uid, namespace)

    def check(self, uids: range) -> None:
        host_namespace = Path("/proc/1/ns/net").readlink().name
        if not self.seen:
            fail("job isolation", detail="no training process was seen while the jobs ran")
        for pid, (uid, namespace) in sorted(self.seen.items()):
            if uid not in uids:
                fail("job isolation", detail=f"training process {pid} ran as uid {uid}, not in {uids}")
            if namespace == host_namespace:
                fail("job isolation", detail=f"training process {pid} shared the host's network")
        found = sorted({uid for uid, _ in self.seen.values()})
        print(f"job isolation: {len(self.seen)} training processes, uids {found}, own network namespaces")


def parse_uids(text: str) -> range:
    low, _, high = text.partition("-")
    return range(int(low), int(high) + 1)


def workflow_archive(files: list[str], labels: str) -> bytes:
    """The prototype's upload: the workflow's files in one tar.gz."""
    members = {
        "files.txt": "\n".join(files) + "\n",
        "labels.txt": labels,
        "model.json": json.dumps(MODEL),
        "params.json": json.dumps(SMALL_PARAMS),
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def check_policy(args: argparse.Namespace, anonymous: Caller, stranger: Caller) -> None:
    """401 without a token and 403 outside the policy, on both services, before any job exists."""
    expect_refused("API GET /jobs without a token", anonymous.get(f"{args.api}/jobs"), 401)
    expect_refused("API GET /jobs as a user outside the policy", stranger.get(f"{args.api}/jobs"), 403)
    expect_refused("TFaaS GET /models without a token", anonymous.get(f"{args.tfaas}/models"), 401)
    expect_refused(
        "TFaaS GET /models as a user outside the policy", stranger.get(f"{args.tfaas}/models"), 403
    )
    refused_upload = stranger.post(
        f"{args.api}/upload", data=workflow_archive([], "1\n"), headers={"Content-Type": "application/gzip"}
    )
    expect_refused("API POST /upload as a user outside the policy", refused_upload, 403)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--origin-dir", type=Path, required=True, help="the origin's folder for the files")
    parser.add_argument("--data-url", required=True, help="root:// URL of that folder through the proxy")
    parser.add_argument("--api", required=True, help="base URL of the MLaaS4HEP API")
    parser.add_argument("--tfaas", required=True, help="base URL of TFaaS")
    parser.add_argument("--idp-port", type=int, required=True, help="loopback port of the configured issuer")
    parser.add_argument("--audience", default="mlaas4hep", help="the audience the tokens carry")
    parser.add_argument("--owner-sub", required=True, help="the owner's subject (oauth2_proxy_owner_sub)")
    parser.add_argument("--shared-group", default="", help="the allowed group, when the appliance is shared")
    parser.add_argument("--client", required=True, help="the mlaas4hep-client program")
    parser.add_argument("--name", default="molecule.e2e", help="model name (in the owner's namespace)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for each job")
    parser.add_argument("--job-uids", type=parse_uids, required=True, help="the worker's job_uids, LOW-HIGH")
    args = parser.parse_args()

    groups = (args.shared_group,) if args.shared_group else ()
    owner_user = User(args.owner_sub, "owner", groups)
    with IdentityProvider.running(port=args.idp_port) as idp:
        owner = Caller(idp.mint(owner_user, args.audience))
        stranger = Caller(idp.mint(User("e2e-stranger-sub", "stranger", ("elsewhere",)), args.audience))
        colleague = Caller(idp.mint(User("e2e-colleague-sub", "colleague", groups), args.audience))
        check_policy(args, Caller(None), stranger)
        with JobProcessWatch() as watch:
            job = run_jobs(args, owner, colleague, idp.mint(owner_user, args.audience))
        watch.check(args.job_uids)
        serve_and_predict(args, owner, job)


def run_jobs(args: argparse.Namespace, owner: Caller, colleague: Caller, owner_token: str) -> dict:
    """Submit through every path, wait for all three jobs; the first job, with the ROOT files it read."""
    schema = SyntheticSchema(n_flat=4, n_jagged=2)
    files = {}
    for label, shift, seed in (("signal", 1.0, 1), ("background", 0.0, 2)):
        path = write_root_file(args.origin_dir / f"{label}.root", 4000, shift=shift, seed=seed, schema=schema)
        path.chmod(0o644)
        files[label] = path
    urls = [f"{args.data_url}/{files[label].name}" for label in ("signal", "background")]

    # 1. The resource API, the workflow inline.
    workflow = {"name": args.name, "files": urls, "labels": [1, 0], "params": PARAMS, "model": MODEL}
    job_id = expect("API POST /jobs", owner.post(f"{args.api}/jobs", json=workflow), 201, 202).json()["id"]

    # 2. The prototype's calls: the files in one upload, then /submit naming them.
    uploaded = owner.post(
        f"{args.api}/upload",
        data=workflow_archive(urls, "1\n0\n"),
        headers={"Content-Type": "application/gzip"},
    )
    expect("API POST /upload", uploaded, 200, 201)
    prototype = {
        "name": f"{args.name}-submit",
        "files": "files.txt",
        "labels": "labels.txt",
        "model": "model.json",
        "params": "params.json",
    }
    submitted = expect(
        "API POST /submit", owner.post(f"{args.api}/submit", json=prototype), 200, 201, 202
    ).json()

    # 3. The command-line client, which uploads the workflow's local files itself.
    folder = Path(__file__).resolve().parent / "client-workflow"
    folder.mkdir(exist_ok=True)
    (folder / "model.json").write_text(json.dumps(MODEL))
    (folder / "params.json").write_text(json.dumps(SMALL_PARAMS))
    (folder / "files.txt").write_text("\n".join(urls) + "\n")
    client_workflow = {"name": f"{args.name}-client", "files": "files.txt", "labels": [1, 0]}
    client_workflow |= {"model": "model.json", "params": "params.json"}
    (folder / "workflow.json").write_text(json.dumps(client_workflow))
    client = subprocess.run(
        [args.client, "--server", args.api, "--token", owner_token, "submit", str(folder / "workflow.json")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if client.returncode != 0:
        fail("mlaas4hep-client submit", detail=f"exit {client.returncode}: {client.stderr[-2000:]}")
    client_job = json.loads(client.stdout)
    print(f"mlaas4hep-client submit -> job {client_job['id']}", flush=True)

    job = wait_for_job(owner, args.api, job_id, args.timeout)
    wait_for_job(owner, args.api, submitted["job_id"], args.timeout)
    wait_for_job(owner, args.api, client_job["id"], args.timeout)
    name = job["model_name"]

    if args.shared_group:
        # A second member of the shared group: the owner's job and model are not theirs.
        expect_refused(
            f"API GET /jobs/{job_id} as another member", colleague.get(f"{args.api}/jobs/{job_id}"), 404
        )
        mine = expect("API GET /jobs as another member", colleague.get(f"{args.api}/jobs"), 200).json()
        listed = mine if isinstance(mine, list) else mine.get("jobs", [])
        if any(entry.get("id") == job_id for entry in listed):
            fail("API GET /jobs as another member", detail="lists the owner's job")
        refused = colleague.delete(f"{args.tfaas}/delete/{name}")
        if refused.status_code not in (403, 404):
            fail(f"TFaaS DELETE /delete/{name} as another member (expected 403 or 404)", refused)
        print(f"TFaaS DELETE /delete/{name} as another member -> {refused.status_code}", flush=True)
    return {**job, "signal_file": files["signal"]}


def serve_and_predict(args: argparse.Namespace, owner: Caller, job: dict) -> None:
    job_id, name = job["id"], job["model_name"]
    # 4. The bundle back through TFaaS's own upload: it becomes the next version.
    bundle = expect(
        f"API GET /jobs/{job_id}/model", owner.get(f"{args.api}/jobs/{job_id}/model"), 200
    ).content
    version = expect(
        "TFaaS POST /upload",
        owner.post(
            f"{args.tfaas}/upload",
            params={"name": name},
            data=bundle,
            headers={"Content-Type": "application/gzip"},
        ),
        200,
        201,
    ).json()["version"]

    # TFaaS reloads the repository by itself; the new version appears within a few seconds.
    params = wait_for_params(owner, args.tfaas, name, 60, version=version)
    raw = first_events(job["signal_file"], params)
    predicted = expect(
        "TFaaS POST /json", owner.post(f"{args.tfaas}/json", json={"model": name, "raw": raw}), 200
    )
    print(f"TFaaS POST /json ({name} v{version}, 3 signal events) -> {predicted.text}")


if __name__ == "__main__":
    main()
