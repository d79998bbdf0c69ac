"""Command line: ``mlaas4hep read|train|predict|generate`` and ``python -m appliance serve|worker``.

Each subcommand parses its arguments here and hands them to the module that owns the work. Bad user input
raises ``BadInputError``; it is printed as one line naming the culprit, with exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from servicecore.errors import BadInputError


def _workflow_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--files", required=True, help="text file with one ROOT file path or URL per line")
    parser.add_argument(
        "--labels",
        required=True,
        help="text file with one label per file (or a comma list, or the name of a label branch)",
    )
    parser.add_argument("--params", required=True, help="params.json of the workflow")
    parser.add_argument("--preproc", help="preproc.json: new branches and cuts")
    parser.add_argument(
        "--specs", help="specs JSON file: reused when it matches the inputs, else (re)written"
    )


def _server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="where jobs, uploads and the model repository live")
    parser.add_argument("--config", help="settings file (JSON or YAML); the environment overrides it")


def _predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--files", required=True, help="text file with one ROOT file path or URL per line")
    parser.add_argument("--model", help="NAME or NAME/VERSION in the model repository (--models-dir)")
    parser.add_argument("--models-dir", help="model repository directory")
    parser.add_argument("--bundle", help="a model bundle directory, instead of --model")
    parser.add_argument("--fout", required=True, help="output directory, or a root:// directory URL")
    parser.add_argument("--tree", help="tree or RNTuple to read (default: the one the model was trained on)")
    parser.add_argument("--redirector", help="XRootD redirector for files not found locally")
    parser.add_argument("--scheduler", help="address of a running Dask scheduler (default: a local cluster)")
    parser.add_argument("--workers", type=int, default=2, help="workers of the local cluster")
    parser.add_argument(
        "--processes", action="store_true", help="local cluster of worker processes (default: threads)"
    )
    parser.add_argument(
        "--task-entries", type=int, default=500_000, help="entries per task (big files split)"
    )
    parser.add_argument("--step", type=int, default=50_000, help="entries read at a time within a task")
    parser.add_argument(
        "--progress-file", help="append one JSON line per progress event here (the job worker follows it)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlaas4hep", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    read = sub.add_parser("read", help="stream a workflow's data without training and report the rate")
    _workflow_arguments(read)
    read.add_argument("--quiet", action="store_true", help="no progress bar")

    train = sub.add_parser("train", help="train a model on a workflow and write a model bundle")
    _workflow_arguments(train)
    train.add_argument("--model", required=True, help="model.py defining model(idim), or a JSON model")
    train.add_argument("--fout", required=True, help="output directory of the model bundle")
    train.add_argument("--publish", help="model repository directory to publish the bundle into")
    train.add_argument("--name", help="model name in the repository (default: the output directory's name)")
    train.add_argument("--quiet", action="store_true", help="no per-epoch progress")
    train.add_argument(
        "--progress-file", help="append one JSON line per progress event here (the job worker follows it)"
    )
    train.add_argument(
        "--init-model", help="a model bundle directory to start from: its weights and input transform"
    )

    predict = sub.add_parser("predict", help="apply a model to ROOT files and write one friend tree per file")
    _predict_arguments(predict)

    generate = sub.add_parser("generate", help="write a synthetic NanoAOD-like ROOT file (TTree)")
    generate.add_argument("output")
    generate.add_argument("--events", type=int, default=10_000)
    generate.add_argument(
        "--shift",
        type=float,
        default=0.0,
        help="moves every distribution; signal > 0 separates from background = 0",
    )
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--flat", type=int, default=20, help="number of flat branches")
    generate.add_argument("--jagged", type=int, default=40, help="number of jagged branches")

    serve = sub.add_parser("serve", help="run the MLaaS4HEP HTTP API under gunicorn")
    _server_arguments(serve)
    serve.add_argument("--port", type=int)
    serve.add_argument("--bind", help="address to bind (default 127.0.0.1)")

    worker = sub.add_parser("worker", help="run the job workers")
    _server_arguments(worker)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = _dispatch(args)
    except BadInputError as err:
        print(f"mlaas4hep {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mlaas4hep {args.command}: interrupted", file=sys.stderr)
        return 130
    if isinstance(result, dict):
        print(json.dumps(result, sort_keys=True))
        return 0
    return int(result or 0)


def _dispatch(args: argparse.Namespace) -> dict | int | None:
    # Imports are deferred: TensorFlow takes seconds to import and `read` never needs it.
    if args.command == "read":
        from appliance.data.streaming import read_workflow

        return read_workflow(
            args.files,
            args.labels,
            args.params,
            args.preproc,
            args.specs,
            progress=not args.quiet and sys.stderr.isatty(),
        )
    if args.command == "train":
        from appliance.training.command import train_from_cli

        return train_from_cli(args)
    if args.command == "predict":
        from appliance.inference.predict import predict_from_cli

        return predict_from_cli(args)
    if args.command == "generate":
        from appliance.data.synthetic import SyntheticSchema, write_root_file

        path = write_root_file(
            args.output,
            args.events,
            shift=args.shift,
            seed=args.seed,
            schema=SyntheticSchema(args.flat, args.jagged),
        )
        return {"file": str(path), "events": args.events}
    if args.command == "serve":
        from appliance.server.service import serve

        return serve(args)
    if args.command == "worker":
        from appliance.server.service import worker

        return worker(args)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
