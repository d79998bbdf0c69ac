"""The model layer in-process: the NumPy engine against TensorFlow, validation, batching, reloads, memory."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from servicecore.errors import BadInputError
from tests.tfaas import bundles
from tests.tfaas.bundles import reference_predict
from tfaas.batching import Batcher
from tfaas.dataplane import to_matrix
from tfaas.engine import NUMPY_BLOCK_ROWS, NUMPY_MAX_ROWS, NumpyGraph
from tfaas.predictor import ModelStore, load_model
from tfaas.repository import read_bundle
from tfaas.settings import BatchingSettings, Settings


@pytest.fixture(scope="module")
def benchmark_mlp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The original TFaaS benchmark model, 42x128x128x128x64x64x1."""
    path = tmp_path_factory.mktemp("mlp42") / "mlp42"
    return bundles.write_bundle(
        path, bundles.mlp(42, (128, 128, 128, 64, 64), 1, seed=11), "mlp42", 42, ["s"]
    )


@pytest.mark.parametrize(
    "rows", [1, 7, NUMPY_MAX_ROWS + 1, NUMPY_BLOCK_ROWS, NUMPY_BLOCK_ROWS + 1, 2 * NUMPY_BLOCK_ROWS + 500]
)
def test_numpy_engine_gives_the_savedmodels_numbers(benchmark_mlp: Path, rows: int) -> None:
    model = load_model(read_bundle("mlp42", 1, benchmark_mlp))
    assert model.engine == "numpy"
    x = np.random.default_rng(rows).normal(size=(rows, 42)).astype(np.float32) * 3
    original = x.copy()
    got = model.run(x)
    assert got.dtype == np.float32 and got.shape == (rows, 1)
    np.testing.assert_allclose(got, reference_predict(benchmark_mlp, x), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(x, original)  # in-place steps never touch the caller's input
    np.testing.assert_array_equal(model.run(x), got)  # nor leave state behind between calls


@pytest.mark.parametrize(("tf_threads", "numpy_rows"), [(1, 5 * NUMPY_BLOCK_ROWS), (2, NUMPY_MAX_ROWS)])
def test_large_batches_go_to_tensorflow_only_when_it_has_several_threads(
    benchmark_mlp: Path, monkeypatch: pytest.MonkeyPatch, tf_threads: int, numpy_rows: int
) -> None:
    model = load_model(read_bundle("mlp42", 1, benchmark_mlp), tf_threads=tf_threads)
    assert model.engine == "numpy"
    calls: list[int] = []
    numpy_call = NumpyGraph.__call__

    def counted(graph: NumpyGraph, x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        return numpy_call(graph, x)

    monkeypatch.setattr(NumpyGraph, "__call__", counted)
    x = np.random.default_rng(5).normal(size=(numpy_rows + 1, 42)).astype(np.float32)
    np.testing.assert_allclose(model.run(x), reference_predict(benchmark_mlp, x), rtol=1e-4, atol=1e-6)
    if tf_threads == 1:
        assert calls and max(calls) == NUMPY_BLOCK_ROWS and sum(calls) == len(x)
    else:
        assert calls == []
        model.run(x[:numpy_rows])
        assert calls == [numpy_rows]


def test_softmax_and_tanh_models_use_numpy_too(bundle_sources: dict[str, Path], tmp_path: Path) -> None:
    path = bundles.write_bundle(
        tmp_path / "t", bundles.mlp(5, (7, 3), 3, seed=9, activation="tanh"), "t", 5, []
    )
    for bundle in (path, bundle_sources["small_v1"]):
        model = load_model(read_bundle("m", 1, bundle))
        x = np.random.default_rng(3).normal(size=(9, model.dim)).astype(np.float32)
        assert model.engine == "numpy"
        np.testing.assert_allclose(model.run(x), reference_predict(bundle, x), rtol=1e-4, atol=1e-6)


def test_other_graphs_run_in_tensorflow(bundle_sources: dict[str, Path]) -> None:
    model = load_model(read_bundle("tfonly", 1, bundle_sources["tfonly"]))
    assert model.engine == "tensorflow"
    x = np.random.default_rng(4).normal(size=(6, 4)).astype(np.float32)
    np.testing.assert_allclose(model.run(x), reference_predict(bundle_sources["tfonly"], x), rtol=1e-6)


def test_engine_can_be_turned_off(bundle_sources: dict[str, Path]) -> None:
    assert (
        load_model(read_bundle("s", 1, bundle_sources["small_v1"]), numpy_engine=False).engine == "tensorflow"
    )


def test_unloadable_bundle_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "saved_model.pb").write_bytes(b"not a protobuf")
    with pytest.raises(BadInputError, match="not a loadable SavedModel"):
        load_model(read_bundle("broken", 1, tmp_path))


def test_wrong_signature_is_a_clear_error(bundle_sources: dict[str, Path], tmp_path: Path) -> None:
    shutil.copytree(bundle_sources["small_v1"], tmp_path / "b")
    (tmp_path / "b" / "params.json").write_text(json.dumps({"signature": "predict"}))
    with pytest.raises(BadInputError, match="no signature 'predict'"):
        load_model(read_bundle("b", 1, tmp_path / "b"))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([], "empty"),
        ([[]], "empty"),
        ("1,2", "list"),
        ([1, 2, "3"], "only numbers"),
        ([True, False, True], "only numbers"),
        ([[1, 2, 3], [1, 2]], "3 numbers"),
        ([1, 2], "expects 3 features"),
        ([[[1, 2, 3]]], "dimensions"),
        ([1, 2, float("nan")], "finite"),
        ([1, 2, float("inf")], "finite"),
        ([1, 2, 1e300], "finite"),
        ([[1, 2, 3]] * 11, "at most 10 rows"),
    ],
)
def test_to_matrix_refuses_bad_values(values: object, message: str) -> None:
    with pytest.raises(BadInputError, match=message):
        to_matrix(values, 3, 10)


def test_to_matrix_accepts_rows_and_batches() -> None:
    matrix, single = to_matrix([1, 2, 3], 3, 10)
    assert single and matrix.shape == (1, 3) and matrix.dtype == np.float32
    matrix, single = to_matrix([[1, 2, 3], [4.5, 5, 6]], 3, 10)
    assert not single and matrix.shape == (2, 3)


def test_batcher_gathers_concurrent_requests_and_returns_each_its_rows() -> None:
    calls: list[int] = []
    in_flight = [0]
    lock = threading.Lock()

    def slow_double(matrix: np.ndarray) -> np.ndarray:
        calls.append(len(matrix))
        time.sleep(0.02)
        return matrix * 2

    batcher = Batcher(slow_double, max_rows=64, max_wait_s=0.05, in_flight=lambda: in_flight[0])
    results: dict[int, np.ndarray] = {}

    def client(i: int) -> None:
        with lock:
            in_flight[0] += 1
        try:
            results[i] = batcher.submit(np.full((i % 3 + 1, 2), i, dtype=np.float32))
        finally:
            with lock:
                in_flight[0] -= 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, result in results.items():
        np.testing.assert_array_equal(result, np.full((i % 3 + 1, 2), 2 * i))
    assert len(results) == 24
    assert sum(calls) == sum(i % 3 + 1 for i in range(24))
    assert max(calls) > 3  # requests were gathered into batches
    assert len(calls) < 24


def test_batcher_passes_errors_to_every_caller_of_the_batch() -> None:
    def broken(matrix: np.ndarray) -> np.ndarray:
        raise BadInputError("model exploded")

    batcher = Batcher(broken, max_rows=8, max_wait_s=0.01, in_flight=lambda: 1)
    with pytest.raises(BadInputError, match="exploded"):
        batcher.submit(np.zeros((1, 2), dtype=np.float32))


def test_lone_request_is_not_delayed() -> None:
    batcher = Batcher(lambda m: m, max_rows=8, max_wait_s=1.0, in_flight=lambda: 1)
    start = time.monotonic()
    batcher.submit(np.zeros((1, 2), dtype=np.float32))
    assert time.monotonic() - start < 0.5


def _rss() -> int:
    with open(f"/proc/{os.getpid()}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_changed_bundles_are_reloaded_and_memory_is_released(
    bundle_sources: dict[str, Path], tmp_path: Path
) -> None:
    repo = tmp_path / "models"
    shutil.copytree(bundle_sources["small_v1"], repo / "small" / "1")
    store = ModelStore(
        Settings(
            model_dir=repo, reload_interval_s=0.0, preload=False, batching=BatchingSettings(enabled=False)
        )
    )
    x = np.ones((1, 4), dtype=np.float32)
    v1, v2 = (
        reference_predict(bundle_sources["small_v1"], x),
        reference_predict(bundle_sources["small_v2"], x),
    )
    sizes = []
    for i in range(16):
        source = bundle_sources["small_v2" if i % 2 else "small_v1"]
        staging = repo / f".staging{i}"
        shutil.copytree(source, staging)
        shutil.rmtree(repo / "small" / "1")
        staging.rename(repo / "small" / "1")
        store.get("small")  # the version loaded before answers while the changed one loads in the background
        assert store.wait_for_loads(120)
        model = store.get("small")
        np.testing.assert_allclose(model.predict(x), v2 if i % 2 else v1, rtol=1e-5)
        del model
        assert len(store.loaded()) == 1
        sizes.append(_rss())
    growth = sizes[-1] - sizes[5]
    print(f"RSS after reloads 6..16: {[round(s / 1e6) for s in sizes[5:]]} MB")
    assert growth < 60 * 1024 * 1024, f"RSS grew by {growth / 1e6:.0f} MB over 10 reloads: {sizes}"
