"""The feature cache: epochs after the first read no ROOT file, same results, and the bound respected."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from appliance.data.streaming import EventStream
from appliance.training.feature_cache import FeatureCache
from appliance.training.run import run_training
from tests.training.conftest import write_workflow

pytestmark = pytest.mark.slow


@pytest.fixture
def stream_passes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The epoch of every pass over the ROOT files (the stream's chunks), and the events it read."""
    passes: list[int] = []
    original = EventStream.chunks

    def counted(self: EventStream, *args: Any, **kwargs: Any) -> Any:
        passes.append(kwargs.get("epoch", args[0] if args else None))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(EventStream, "chunks", counted)
    return passes


def train(base: Path, sample_files: dict[str, Path], training: dict[str, Any]) -> dict[str, Any]:
    workflow = write_workflow(
        base / "workflow",
        [sample_files["signal"], sample_files["background"]],
        [1, 0],
        params={"epochs": 3, "training": training},
    )
    result = run_training(**workflow.kwargs(fout=base / "out" / "higgs"), specs=base / "specs.json")
    return json.loads((Path(result["bundle"]) / "metrics.json").read_text())


def test_epochs_after_the_first_read_the_cache_not_the_files(tmp_path, sample_files, stream_passes):
    cached = train(tmp_path / "cached", sample_files, {})
    cached_passes = [p for p in stream_passes if p is not None]
    assert cached_passes == [0]  # pass 1 only (the specs pass calls the reader, not the stream's chunks)
    history = cached["history"]
    assert [h["events_read"] for h in history] == [8000, 0, 0]
    train_events = cached["events"]["train"]
    assert [h["events_from_cache"] for h in history] == [0, train_events, train_events]
    assert "feature cache:" in cached["feature_cache"]

    stream_passes.clear()
    streamed = train(tmp_path / "streamed", sample_files, {"feature_cache_mb": 0})
    assert [p for p in stream_passes if p is not None] == [0, 1, 2]
    assert [h["events_read"] for h in streamed["history"]] == [8000, 8000, 8000]
    # Same seed and events, another order in epochs 2 and 3: the same quality within a small tolerance.
    assert cached["test"]["auc"] == pytest.approx(streamed["test"]["auc"], abs=0.02)
    assert cached["test"]["loss"] == pytest.approx(streamed["test"]["loss"], abs=0.05)


def test_the_cache_is_reproducible_with_the_same_seed(tmp_path, sample_files):
    first = train(tmp_path / "one", sample_files, {})
    second = train(tmp_path / "two", sample_files, {})
    assert first["test"]["auc"] == pytest.approx(second["test"]["auc"], abs=1e-6)
    assert first["history"][-1]["loss"] == pytest.approx(second["history"][-1]["loss"], rel=1e-5)


def test_a_training_part_above_the_bound_streams_every_epoch_and_says_so(
    tmp_path, sample_files, stream_passes, caplog
):
    with caplog.at_level(logging.WARNING, logger="appliance.training.feature_cache"):
        metrics = train(tmp_path, sample_files, {"feature_cache_mb": 0.01})
    assert [p for p in stream_passes if p is not None] == [0, 1, 2]
    assert "more than training.feature_cache_mb" in metrics["feature_cache"]
    assert any("every epoch streams" in r.getMessage() for r in caplog.records)
    assert metrics["test"]["auc"] > 0.85


def test_the_cache_gives_every_event_once_per_epoch_in_another_order(tmp_path):
    dim, rows = 3, 10_000
    x = np.arange(rows * dim, dtype=np.float32).reshape(rows, dim)
    y = np.arange(rows) % 2
    cache = FeatureCache(tmp_path, dim, bound_bytes=rows * (dim * 4 + 8), seed=5)
    assert cache.plan(rows)
    for start in range(0, rows, 1000):
        cache.append(x[start : start + 1000], y[start : start + 1000])
    cache.finish()
    assert cache.ready and cache.rows == rows
    orders = []
    for epoch in (1, 2):
        blocks = list(cache.blocks(epoch))
        xs = np.concatenate([b[0] for b in blocks])
        ys = np.concatenate([b[1] for b in blocks])
        index = (xs[:, 0] / dim).astype(int)
        assert sorted(index.tolist()) == list(range(rows))  # every event once
        np.testing.assert_array_equal(ys, y[index])  # labels travel with their rows
        orders.append(index)
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[0], np.arange(rows))


def test_the_cache_stops_when_the_written_bytes_pass_the_bound(tmp_path):
    dim = 4
    cache = FeatureCache(tmp_path, dim, bound_bytes=100 * (dim * 4 + 8), seed=1)
    assert cache.plan(50)  # the estimate fits ...
    cache.append(np.zeros((80, dim), np.float32), np.zeros(80, np.int64))
    cache.append(np.zeros((80, dim), np.float32), np.zeros(80, np.int64))  # ... the data does not
    cache.finish()
    assert not cache.ready and "grew past" in cache.note
    assert not any(tmp_path.iterdir())  # nothing left on disk


def test_hold_out_parts_are_a_capped_proportional_sample_stated_in_the_metrics(tmp_path, sample_files):
    # 0.05 MiB is about 330 rows of this workflow's width: far fewer than the ~1600 test events.
    metrics = train(tmp_path, sample_files, {"feature_cache_mb": 0.05})
    events = metrics["events"]
    cap = int(0.05 * 2**20) // (metrics["features"] * 4 + 8)
    for part in ("validation", "test"):
        sample = events[f"{part}_sample"]
        assert sample["kept"] == events[part] <= cap == sample["max_events"]
        assert sample["of"] > 2 * cap and 0 < sample["keep_probability"] < 1
        assert events[part] > 0.8 * cap  # close to the bound, not a handful
    assert metrics["test"]["events"] == events["test"]
    # Same probability for every event: the classes keep their shares (3000 signal of 8000 events).
    signal_share = metrics["test"]["class_events"][1] / metrics["test"]["events"]
    assert signal_share == pytest.approx(3000 / 8000, abs=0.08)
    assert metrics["test"]["auc"] > 0.85
