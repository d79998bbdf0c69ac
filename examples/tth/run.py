"""The ttH example end to end: samples, training, batch inference into friend trees, the comparison with cuts.

    python examples/tth/run.py OUT [--events 20000] [--epochs 10]

1. NanoAOD-shaped ttH(bb) and ttbar files (``samples.py``): one pair to train on, an independent pair to test.
2. ``mlaas4hep train`` on the first pair (``params.json``, ``preproc.json``, ``model.json`` beside this file),
   weighted with ``genWeight``, published into ``OUT/models`` as ``example.tth``.
3. ``mlaas4hep predict`` on the test pair: one friend tree of scores per file in ``OUT/friends``.
4. ``compare.py``: the model against the cut-based selection at the same signal efficiency, printed, and
   plotted into ``OUT/comparison.png``; the numbers also go to ``OUT/comparison.json``.

The same workflow runs through the appliance's API (``POST /jobs`` with these files, then a ``predict`` job):
docs/example-tth.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import compare  # noqa: E402 - the example's own modules, beside this script
import samples  # noqa: E402

from appliance.inference.predict import PredictOptions, run_predict  # noqa: E402
from appliance.training.run import run_training  # noqa: E402

MODEL_NAME = "example.tth"


def run(out: Path, events: int, epochs: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    train = [
        samples.write_sample(out / "data" / f"{p}_train.root", p, events, seed)
        for p, seed in (("tth", 11), ("ttbar", 12))
    ]
    test = [
        samples.write_sample(out / "data" / f"{p}_test.root", p, events // 2, seed)
        for p, seed in (("tth", 21), ("ttbar", 22))
    ]
    (out / "files.txt").write_text("".join(f"{path}\n" for path in train))
    (out / "labels.txt").write_text("1\n0\n")
    params = {**json.loads((HERE / "params.json").read_text()), "epochs": epochs}
    trained = run_training(
        files=out / "files.txt",
        labels=out / "labels.txt",
        model=HERE / "model.json",
        params=params,
        preproc=HERE / "preproc.json",
        fout=out / "bundle" / MODEL_NAME,
        publish=out / "models",
        name=MODEL_NAME,
    )
    friends = out / "friends"
    summary = run_predict(
        [str(path) for path in test], trained["published"], friends, PredictOptions(workers=2)
    )
    names = {Path(record["input"]).name: friends / record["friend"] for record in summary["files"]}
    signal = compare.read(test[0], names[test[0].name])
    background = compare.read(test[1], names[test[1].name])
    result = compare.compare(signal, background)
    compare.plot(signal, background, result, out / "comparison.png")
    result["training"] = {
        "version": trained["version"],
        "test_metrics": trained["metrics"],
        "epochs": epochs,
        "events": events,
    }
    result["friends"] = summary["files"]
    (out / "comparison.json").write_text(json.dumps(result, indent=2))
    print(compare.describe(result))
    return result


def main() -> None:
    logging.getLogger("distributed").setLevel(logging.WARNING)  # Dask's worker chatter
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "out", type=Path, help="folder for the samples, the model, the friend trees, the plot"
    )
    parser.add_argument(
        "--events", type=int, default=20_000, help="events per process to train on (half to test)"
    )
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    run(args.out, args.events, args.epochs)


if __name__ == "__main__":
    main()
