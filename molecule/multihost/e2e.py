"""End-to-end calls on the multi-host appliance's front, through its HTTP APIs, with a real issuer's tokens.

The issuer is the test identity provider (tests/auth/idp.py, copied beside this file), started here on the
front's loopback port the appliance was configured with; the worker and the replica reach it through their
own loopback relay (prepare.yml), so the one issuer URL holds on every host. It knows the owner and the
workers' service client (client-credentials grant), whose tokens carry the replicas' ``publisher_subs``.

1. ROOT files into the XRootD origin on the front; a workflow whose files are root:// URLs through the front's
   proxy, at its private address (the job runs on the worker host, in a namespace that reaches only it);
2. ``POST /jobs`` followed to ``succeeded``; the model's delivered version is then served through the front's
   TFaaS port, which haproxy spreads over the replicas (there is no TFaaS on the front): ``GET /params`` and a
   prediction ``POST /json``;
3. a second, longer job followed to ``running``; the script writes ``RUNNING <id>`` to --marker and waits for
   --killed to exist (verify.yml kills the worker host's worker meanwhile), then follows the job until it is
   ``failed`` (the lost worker's reason) or ``queued`` again, and fails if it is still ``running`` when the
   stale limit and a margin have passed.

Runs with the appliance's own virtual environment. Exit status 1 names the call that failed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from idp import IdentityProvider, User

from appliance.data.synthetic import SyntheticSchema, write_root_file
from mlaas4hep_devtools.e2e import MODEL, PARAMS, Caller, expect, fail, first_events, wait_for_params

# Long enough to be killed mid-way on two shared cores.
LONG_PARAMS = {**PARAMS, "epochs": 200, "batch_size": 16}


def job_state(owner: Caller, api: str, job_id: str) -> dict:
    answer = owner.get(f"{api}/jobs/{job_id}")
    if answer.status_code != 200:
        fail(f"GET /jobs/{job_id}", answer)
    return answer.json()


def wait_for(owner: Caller, api: str, job_id: str, states: set[str], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = job_state(owner, api, job_id)
        if job["state"] in states:
            print(f"GET /jobs/{job_id} -> {job['state']}", flush=True)
            return job
        if job["state"] in {"failed", "cancelled", "succeeded"} - states:
            logs = owner.get(f"{api}/jobs/{job_id}/logs").text[-4000:]
            fail(f"job {job_id}", detail=f"ended {job['state']}: {job.get('error')}\n{logs}")
        if time.monotonic() > deadline:
            fail(f"job {job_id}", detail=f"still {job['state']} after {timeout:.0f} s")
        time.sleep(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--origin-dir", type=Path, required=True)
    parser.add_argument(
        "--data-url", required=True, help="root:// URL of the origin folder through the proxy"
    )
    parser.add_argument("--api", required=True)
    parser.add_argument("--tfaas", required=True, help="the front's TFaaS port (haproxy)")
    parser.add_argument("--idp-port", type=int, required=True)
    parser.add_argument("--owner-sub", required=True)
    parser.add_argument("--workers-client", nargs=3, metavar=("ID", "SECRET", "SUB"), required=True)
    parser.add_argument("--marker", type=Path, required=True)
    parser.add_argument("--killed", type=Path, required=True)
    parser.add_argument("--stale-after", type=float, required=True)
    parser.add_argument("--timeout", type=float, default=1200)
    args = parser.parse_args()

    owner_user = User(args.owner_sub, "owner")
    with IdentityProvider.running(port=args.idp_port) as idp:
        client_id, secret, sub = args.workers_client
        idp.add_client(client_id, secret, User(sub, "mlaas4hep-workers"))
        owner = Caller(idp.mint(owner_user, "mlaas4hep"), post_timeout=300)

        schema = SyntheticSchema(n_flat=4, n_jagged=2)
        files = {}
        for label, shift, seed in (("signal", 1.0, 1), ("background", 0.0, 2)):
            path = write_root_file(
                args.origin_dir / f"{label}.root", 4000, shift=shift, seed=seed, schema=schema
            )
            path.chmod(0o644)
            files[label] = path
        urls = [f"{args.data_url}/{files[label].name}" for label in ("signal", "background")]

        workflow = {
            "name": "molecule.multihost",
            "files": urls,
            "labels": [1, 0],
            "params": PARAMS,
            "model": MODEL,
        }
        job_id = expect("API POST /jobs", owner.post(f"{args.api}/jobs", json=workflow), 201, 202).json()[
            "id"
        ]
        job = wait_for(owner, args.api, job_id, {"succeeded"}, args.timeout)
        print(f"JOB {job_id}", flush=True)
        name = job["model_name"]

        # Delivered by the worker to the replica; served through the front's port by haproxy.
        params = wait_for_params(owner, args.tfaas, name, 120)
        print(f"TFaaS GET /params/{name} through the front -> 200", flush=True)
        raw = first_events(files["signal"], params)
        predicted = expect(
            "TFaaS POST /json through the front",
            owner.post(f"{args.tfaas}/json", json={"model": name, "raw": raw}),
            200,
        )
        print(f"prediction of 3 signal events -> {predicted.text}", flush=True)

        # A job whose worker host loses its worker.
        long_flow = {**workflow, "name": "molecule.multihost-lost", "params": LONG_PARAMS}
        long_id = expect("API POST /jobs (long)", owner.post(f"{args.api}/jobs", json=long_flow), 201, 202)
        long_id = long_id.json()["id"]
        wait_for(owner, args.api, long_id, {"running"}, args.timeout)
        args.marker.write_text(f"RUNNING {long_id}\n")
        deadline = time.monotonic() + 300
        while not args.killed.exists():
            if time.monotonic() > deadline:
                fail("waiting for the worker to be killed", detail=f"{args.killed} never appeared")
            time.sleep(1)
        killed_at = time.monotonic()
        lost = wait_for(owner, args.api, long_id, {"failed", "queued"}, args.stale_after + 120)
        print(
            f"lost worker: job {long_id} -> {lost['state']} after {time.monotonic() - killed_at:.0f} s"
            f" ({lost.get('error')})",
            flush=True,
        )


if __name__ == "__main__":
    main()
