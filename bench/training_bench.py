"""Training throughput: the whole pipeline (stream, then train) against training on arrays already in memory.

Both sides train a fresh copy of the same model (same seed) for one epoch on the same training events with the
same batch size, in the same run. The pipeline side is ``appliance.training.trainer.Trainer`` reading the ROOT files
(locally, or through a loopback XRootD proxy with ``--xrootd``); the baseline is ``model.fit`` on NumPy arrays
gathered from the same stream beforehand. The ratio pipeline / in-memory shows whether reading slows training
(target: at least 0.8). Results go to bench/results/training.md.

    .venv/bin/python bench/training_bench.py                       # the full measurement (quiet machine)
    .venv/bin/python bench/training_bench.py --events 4000 --quick # smoke run

``--feature-cache`` measures epoch 2 instead (issue 16): after a first pass that fills the feature cache, one
epoch read from the memory-mapped cache in shuffled blocks against ``model.fit`` on the same arrays in memory
(target: at least 0.9); results go to bench/results/feature_cache.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

# Before TensorFlow is imported: it reads the level once, when it loads.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from appliance.data.specs import load_or_compute_specs
from appliance.data.streaming import TRAIN, EventStream
from appliance.data.synthetic import SyntheticSchema, write_root_file
from appliance.data.workflow import load_workflow
from appliance.training.feature_cache import FeatureCache
from appliance.training.models import load_model
from appliance.training.run import configure_reproducibility, training_device
from appliance.training.trainer import EpochCounter, Trainer
from mlaas4hep_devtools.xrootd import xrootd_site

# The checkout's files: the example model, the XRootD proxy role's template, the results folder.
REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def data_urls(files: list[Path], xrootd: bool) -> Iterator[list[str]]:
    if not xrootd:
        yield [str(f) for f in files]
        return
    with xrootd_site(REPO / "roles" / "xrootd_proxy") as site:
        yield [site.proxy_url(site.add_file(f, f"bench/{f.name}")) for f in files]


def fresh_model(model_path: Path, dim: int, n_classes: int, seed: int):
    configure_reproducibility(seed)
    return load_model(model_path, dim, n_classes)


def pipeline_epoch(stream: EventStream, model_path: Path, seed: int, workdir: Path) -> dict[str, float]:
    model, encoding = fresh_model(model_path, stream.dim, stream.n_classes, seed)
    trainer = Trainer(stream, model, encoding, workdir)
    counter = EpochCounter()
    started = time.monotonic()
    model.fit(trainer.train_dataset(0, counter), epochs=1, verbose=0, shuffle=False)
    seconds = time.monotonic() - started
    trainer._raise_failure()
    return {"events": counter.trained, "seconds": seconds, "events_per_s": counter.trained / seconds}


def cached_epoch(stream: EventStream, model_path: Path, seed: int, workdir: Path) -> dict[str, float]:
    """Pass 1 fills the feature cache (not timed); epoch 2 trains from it (timed)."""
    model, encoding = fresh_model(model_path, stream.dim, stream.n_classes, seed)
    cache = FeatureCache(workdir, stream.dim, 8 * 2**30, seed)
    cache.plan(stream.total_events)
    trainer = Trainer(stream, model, encoding, workdir, feature_cache=cache)
    model.fit(trainer.train_dataset(0, EpochCounter()), epochs=1, verbose=0, shuffle=False)
    trainer._raise_failure()
    assert cache.ready, cache.note
    counter = EpochCounter()
    started = time.monotonic()
    model.fit(trainer.train_dataset(1, counter), initial_epoch=1, epochs=2, verbose=0, shuffle=False)
    seconds = time.monotonic() - started
    trainer._raise_failure()
    assert counter.read == 0 and counter.cached == counter.trained
    return {"events": counter.trained, "seconds": seconds, "events_per_s": counter.trained / seconds}


def in_memory_epoch(
    x: np.ndarray,
    y: np.ndarray,
    stream: EventStream,
    model_path: Path,
    seed: int,
    batch_size: int,
    second_epoch: bool = False,
) -> dict[str, float]:
    """One epoch of ``model.fit`` on arrays; with ``second_epoch`` the first (graph tracing) is not timed, as
    on the feature-cache side."""
    model, encoding = fresh_model(model_path, stream.dim, stream.n_classes, seed)
    targets = encoding.targets(y, stream.n_classes)
    first = 0
    if second_epoch:
        model.fit(x, targets, batch_size=batch_size, epochs=1, verbose=0, shuffle=False)
        first = 1
    started = time.monotonic()
    model.fit(
        x, targets, batch_size=batch_size, initial_epoch=first, epochs=first + 1, verbose=0, shuffle=False
    )
    seconds = time.monotonic() - started
    return {"events": len(y), "seconds": seconds, "events_per_s": len(y) / seconds}


def read_only(stream: EventStream) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """One pass without training: the reading rate, and the training events kept for the baseline."""
    xs, ys, events = [], [], 0
    started = time.monotonic()
    for chunk in stream.chunks(epoch=0):
        events += len(chunk)
        x, y = chunk.part(TRAIN)
        xs.append(x)
        ys.append(y)
    seconds = time.monotonic() - started
    return (
        np.concatenate(xs),
        np.concatenate(ys),
        {"events": events, "seconds": seconds, "events_per_s": events / seconds},
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000, help="events per class (two files)")
    parser.add_argument("--flat", type=int, default=20)
    parser.add_argument("--jagged", type=int, default=40)
    parser.add_argument("--chunk-size", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--model", type=Path, default=REPO / "examples" / "model.py")
    parser.add_argument("--repeats", type=int, default=3, help="alternating measurements; the median is kept")
    parser.add_argument("--xrootd", action="store_true", help="read through a loopback XRootD proxy")
    parser.add_argument("--quick", action="store_true", help="smoke run: one repeat")
    parser.add_argument("--feature-cache", action="store_true", help="epoch 2 from the feature cache")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    results = REPO / "bench" / "results"
    args.output = args.output or results / ("feature_cache.md" if args.feature_cache else "training.md")
    warnings.filterwarnings("ignore", message="Your input ran out of data")  # how every streamed epoch ends
    repeats = 1 if args.quick else args.repeats

    with tempfile.TemporaryDirectory(prefix="training-bench-") as tmp:
        base = Path(tmp)
        schema = SyntheticSchema(args.flat, args.jagged)
        files = [
            write_root_file(base / "signal.root", args.events, shift=0.5, seed=1, schema=schema),
            write_root_file(base / "background.root", args.events, shift=0.0, seed=2, schema=schema),
        ]
        with data_urls(files, args.xrootd) as urls:
            (base / "files.txt").write_text("\n".join(urls) + "\n")
            params = {"chunk_size": args.chunk_size, "batch_size": args.batch_size, "epochs": 1, "seed": 1}
            wf = load_workflow(base / "files.txt", "1,0", params, specs=base / "specs.json")
            spec = load_or_compute_specs(wf)
            stream = EventStream(wf, spec)
            x, y, reading = read_only(stream)
            pipeline, memory = [], []
            for i in range(repeats):
                workdir = base / f"holdout{i}"
                workdir.mkdir()
                measure = cached_epoch if args.feature_cache else pipeline_epoch
                pipeline.append(measure(stream, args.model, wf.params.seed, workdir))
                memory.append(
                    in_memory_epoch(
                        x, y, stream, args.model, wf.params.seed, args.batch_size, args.feature_cache
                    )
                )
                print(
                    f"repeat {i + 1}: pipeline {pipeline[-1]['events_per_s']:.0f} ev/s, "
                    f"in memory {memory[-1]['events_per_s']:.0f} ev/s",
                    file=sys.stderr,
                )

    pipeline_rate = statistics.median(r["events_per_s"] for r in pipeline)
    memory_rate = statistics.median(r["events_per_s"] for r in memory)
    ratio = pipeline_rate / memory_rate
    model, _ = fresh_model(args.model, stream.dim, stream.n_classes, 1)
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": f"{platform.node()} ({os.cpu_count()} CPUs), {training_device()}",
        "source": "loopback XRootD proxy" if args.xrootd else "local files",
        "events": 2 * args.events,
        "train_events": len(y),
        "features": stream.dim,
        "parameters": model.count_params(),
        "chunk_size": args.chunk_size,
        "batch_size": args.batch_size,
        "repeats": repeats,
        "reading_events_per_s": reading["events_per_s"],
        "pipeline_events_per_s": pipeline_rate,
        "in_memory_events_per_s": memory_rate,
        "ratio": ratio,
    }
    print(json.dumps(result, sort_keys=True))
    if args.feature_cache:
        write_cache_markdown(args.output, result, args)
    else:
        write_markdown(args.output, result, args)
    return 0


SMOKE_NOTE = """
Smoke run (`--quick`, small files, shared CPU): it checks that the benchmark works, its figures are not final.
At this size the first epoch's graph tracing weighs on both sides; run the full benchmark on a quiet machine.
"""


def write_markdown(path: Path, r: dict, args: argparse.Namespace) -> None:
    verdict = "meets" if r["ratio"] >= 0.8 else "misses"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"""# Training throughput (issue 3)

`bench/training_bench.py{" --xrootd" if args.xrootd else ""}{" --quick" if args.quick else ""}`, {r["date"]}, {r["host"]}.

One epoch of `{args.model.name}` ({r["parameters"]:,} parameters, {r["features"]} input features), batch size
{r["batch_size"]}, chunk size {r["chunk_size"]}, on the {r["train_events"]:,} training events of {r["events"]:,}
generated events ({args.flat} flat and {args.jagged} jagged branches) read from {r["source"]}. Median of
{r["repeats"]} alternating measurement(s), each on a fresh model with the same seed.

| | events/s | ratio to in-memory |
| --- | ---: | ---: |
| in-memory `model.fit` on NumPy arrays (baseline) | {r["in_memory_events_per_s"]:,.0f} | 1.00 |
| pipeline: stream + train (`Trainer`, tf.data) | {r["pipeline_events_per_s"]:,.0f} | **{r["ratio"]:.2f}** |
| reading alone (stream pass, no training; all events) | {r["reading_events_per_s"]:,.0f} | |

Target: the pipeline reaches at least 0.8 of the in-memory rate. This run {verdict} it.
{SMOKE_NOTE if args.quick else ""}""")


def write_cache_markdown(path: Path, r: dict, args: argparse.Namespace) -> None:
    verdict = "meets" if r["ratio"] >= 0.9 else "misses"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"""# Epochs from the feature cache (issue 16)

`bench/training_bench.py --feature-cache{" --xrootd" if args.xrootd else ""}{" --quick" if args.quick else ""}`,
{r["date"]}, {r["host"]}.

Epoch 2 of `{args.model.name}` ({r["parameters"]:,} parameters, {r["features"]} input features), batch size
{r["batch_size"]}, on the {r["train_events"]:,} training events of {r["events"]:,} generated events
({args.flat} flat and {args.jagged} jagged branches, read from {r["source"]} in pass 1). The pipeline side
trains from the memory-mapped feature cache in shuffled blocks (`Trainer`, tf.data, no ROOT file read: checked);
the baseline is `model.fit` on the same training events as NumPy arrays in memory, also its second epoch (the
first, which traces the graph, is not timed on either side). Median of {r["repeats"]}
interleaved round(s), each on a fresh model with the same seed.

| | events/s | ratio to in-memory |
| --- | ---: | ---: |
| in-memory `model.fit` on NumPy arrays (baseline) | {r["in_memory_events_per_s"]:,.0f} | 1.00 |
| epoch 2 from the feature cache (`Trainer`, tf.data) | {r["pipeline_events_per_s"]:,.0f} | **{r["ratio"]:.2f}** |
| reading alone (stream pass, no training; all events) | {r["reading_events_per_s"]:,.0f} | |

Target: epoch 2 reaches at least 0.9 of the in-memory rate. This run {verdict} it.
{SMOKE_NOTE if args.quick else ""}""")


if __name__ == "__main__":
    sys.exit(main())
