"""``mlaas4hep-client``: the user's command line for the appliance, speaking only its HTTP APIs.

Tokens come, first found wins, from ``--token``, ``$BEARER_TOKEN``, ``$BEARER_TOKEN_FILE``, an oidc-agent
account (``--oidc-agent ACCOUNT`` runs ``oidc-token``), the client-credentials grant (``--client-secret``: for
scripts), or the OAuth2 device-code flow (for people: open the printed URL and enter the code). Tokens from
the two OAuth2 flows are cached (``~/.cache/mlaas4hep-client/tokens.json``, mode 0600) and refreshed.

    mlaas4hep-client token                      print a token, e.g. for curl
    mlaas4hep-client submit workflow.json       upload the local files it names, then submit [--follow]
    mlaas4hep-client submit --kind predict p.json   apply a model of yours to files: {"model": "NAME[/V]",
                                                "files": ..., "fout": optional root:// directory}
    mlaas4hep-client follow JOB [--logs]        its progress until it ends (exit 1 unless it succeeded)
    mlaas4hep-client download JOB [-o DIR]      the trained bundle (tar.gz) and its plots; a predict job's
                                                friend trees (JOB-friends.tar.gz)
    mlaas4hep-client jobs [--state S] | cancel JOB
    mlaas4hep-client predict MODEL rows.csv     predictions from TFaaS (JSON or CSV rows)
    mlaas4hep-client models list | delete NAME
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mlaas4hep_client.api import Api, read_rows
from mlaas4hep_client.options import (
    DEFAULT_AUDIENCE,
    DEFAULT_ISSUER,
    DEFAULT_SCOPE,
    ENV_PREFIX,
    FINAL_STATES,
    SUCCEEDED,
    ClientError,
    Options,
    default_cache,
)
from mlaas4hep_client.tokens import TokenSource
from mlaas4hep_client.workflows import (
    describe_job,
    download_results,
    follow_job,
    prepare_workflow,
    submit_workflow,
)


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


def _server(tokens: TokenSource) -> Api:
    return Api(tokens.options.server, "server", tokens)


def _exit_status(job: Mapping[str, Any]) -> int:
    return 0 if job.get("state") == SUCCEEDED else 1


def cmd_submit(args: argparse.Namespace, tokens: TokenSource) -> int:
    prepared = prepare_workflow(Path(args.workflow), kind=args.kind)
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
    submit.add_argument(
        "--kind",
        choices=["train", "predict"],
        help="train a model (the default), or predict: apply your model NAME[/VERSION] to the files and "
        "write friend trees (overrides the workflow's kind)",
    )
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

    download = commands.add_parser(
        "download", help="a succeeded job's bundle (tar.gz) and plots, or a predict job's friend trees"
    )
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
