"""Serving never stalls: reload in the background, worker replacement, and memory held across republishes.

None of these tests measure time. A background load is held at a gate (an event) to show, deterministically,
that requests are answered by the previous version while it loads; objects are counted instead of RSS.
"""

from __future__ import annotations

import gc
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests

from servicecore.publishing import publish
from tests.tfaas.bundles import reference_predict
from tests.tfaas.conftest import populate
from tests.tfaas.server import TfaasServer, tfaas_server
from tfaas import predictor
from tfaas.engine import NumpyGraph
from tfaas.predictor import LoadedModel, ModelStore
from tfaas.settings import BatchingSettings, Settings

X = np.array([[0.3, -1.2, 2.0, 0.7]], dtype=np.float32)


@pytest.fixture(scope="module")
def expected(bundle_sources: dict[str, Path]) -> dict[str, np.ndarray]:
    return {name: reference_predict(bundle_sources[name], X) for name in ("small_v1", "small_v2")}


def store_on(repo: Path) -> ModelStore:
    settings = Settings(
        model_dir=repo, reload_interval_s=0.0, preload=False, batching=BatchingSettings(enabled=False)
    )
    return ModelStore(settings)


def fresh_repo(tmp_path: Path, bundle_sources: dict[str, Path]) -> Path:
    repo = tmp_path / "models"
    shutil.copytree(bundle_sources["small_v1"], repo / "small" / "1")
    return repo


def test_a_new_version_loads_in_the_background_while_the_old_one_answers(
    tmp_path: Path, bundle_sources: dict[str, Path], expected: dict[str, np.ndarray], monkeypatch
) -> None:
    store = store_on(fresh_repo(tmp_path, bundle_sources))
    old = store.get("small")
    gate, loading = threading.Event(), threading.Event()
    real_load = predictor.load_model

    def held_load(bundle, *args):
        loading.set()
        assert gate.wait(60)
        return real_load(bundle, *args)

    monkeypatch.setattr(predictor, "load_model", held_load)
    publish(bundle_sources["small_v2"], store.repository.root, "small")
    # Version 2 is on disk and being loaded (held at the gate): requests get version 1, at once.
    assert store.get("small") is old
    assert loading.wait(60)
    for _ in range(20):
        model = store.get("small")
        assert model is old and model.warmed
        np.testing.assert_allclose(model.predict(X), expected["small_v1"], rtol=1e-5)
    gate.set()
    assert store.wait_for_loads(120)
    new = store.get("small")
    assert new.bundle.version == 2 and new.warmed
    np.testing.assert_allclose(new.predict(X), expected["small_v2"], rtol=1e-5)
    # The old version was unloaded once the new one was in place; a request holding it still finishes on it.
    assert list(store.loaded()) == [("small", 2)]
    np.testing.assert_allclose(old.predict(X), expected["small_v1"], rtol=1e-5)


def test_a_bundle_changed_in_place_keeps_serving_until_its_reload_is_warm(
    tmp_path: Path, bundle_sources: dict[str, Path], expected: dict[str, np.ndarray], monkeypatch
) -> None:
    repo = fresh_repo(tmp_path, bundle_sources)
    store = store_on(repo)
    old = store.get("small")
    monkeypatch.setattr(predictor, "load_model", _broken_load)
    staging = repo / ".staging"
    shutil.copytree(bundle_sources["small_v2"], staging)
    shutil.rmtree(repo / "small" / "1")
    staging.rename(repo / "small" / "1")
    # The reload fails (a broken bundle): the version loaded before keeps answering, without an error.
    assert store.get("small") is old
    assert store.wait_for_loads(120)
    assert store.get("small") is old
    np.testing.assert_allclose(store.get("small").predict(X), expected["small_v1"], rtol=1e-5)


def _broken_load(bundle, *args):
    from servicecore.errors import BadInputError

    raise BadInputError("not a loadable SavedModel (test)")


def test_republishing_while_requests_run_gives_no_error_and_no_half_loaded_model(
    tmp_path: Path, bundle_sources: dict[str, Path], expected: dict[str, np.ndarray]
) -> None:
    repo = fresh_repo(tmp_path, bundle_sources)
    store = store_on(repo)
    store.get("small")
    answers: list[np.ndarray] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                model = store.get("small")
                assert model.warmed, "a request reached a model that had not answered its warm-up"
                answers.append(model.predict(X))
            except BaseException as err:  # any failure is the test's finding
                errors.append(err)
                return

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for round_ in range(6):
            publish(bundle_sources["small_v2" if round_ % 2 == 0 else "small_v1"], repo, "small")
            store.refresh(force=True)  # queues the load, as the clients' next request would
            assert store.wait_for_loads(120)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert not errors, errors[:3]
    assert answers
    for answer in answers:
        assert any(np.allclose(answer, want, rtol=1e-5) for want in expected.values()), answer
    assert list(store.loaded()) == [("small", 7)]


def count(kind: type) -> int:
    gc.collect()
    return sum(isinstance(obj, kind) for obj in gc.get_objects())


def test_republishing_in_a_loop_does_not_grow_what_is_held(
    tmp_path: Path, bundle_sources: dict[str, Path]
) -> None:
    repo = fresh_repo(tmp_path, bundle_sources)
    before = count(LoadedModel)  # other tests' stores may still be alive
    store = store_on(repo)
    store.get("small")
    held = []
    for round_ in range(12):
        publish(bundle_sources["small_v2" if round_ % 2 == 0 else "small_v1"], repo, "small")
        store.get("small")
        assert store.wait_for_loads(120)
        store.get("small")
        held.append((len(store.loaded()), count(LoadedModel), count(NumpyGraph), count(predictor.Batcher)))
    assert held[-1] == held[2], held  # after the first rounds, nothing accumulates
    assert held[-1][0] == 1 and held[-1][1] - before <= 2, held  # one in the store, at most one in flight


# -- under gunicorn: a killed worker --


@pytest.fixture(scope="module")
def two_workers(
    tmp_path_factory: pytest.TempPathFactory, bundle_sources: dict[str, Path]
) -> Iterator[TfaasServer]:
    base = tmp_path_factory.mktemp("recovery")
    repo = populate(base / "models", bundle_sources)
    publish(bundle_sources["small_v2"], repo, "small")  # the current version is 2
    with tfaas_server(repo, base, workers=2) as running:
        yield running


def test_a_killed_worker_is_replaced_by_one_that_serves_the_current_models_at_once(
    two_workers: TfaasServer,
) -> None:
    first = two_workers.get("/status").json()
    master = psutil.Process(first["pid"]).parent()
    before = {child.pid for child in master.children()}
    assert len(before) == 2
    os.kill(first["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 120
    replacement = None
    while replacement is None:
        assert time.monotonic() < deadline, "no replacement worker"
        # Every answer, from the survivor or the replacement, is a success: the survivor keeps serving.
        status = two_workers.get("/status")
        assert status.status_code == 200
        if status.json()["pid"] not in before:
            replacement = status.json()
    # The replacement's very first answer comes from a worker that has the current models loaded.
    wanted = {"small/2", "legacy/1", "tfonly/1", "alice.raw/1"}
    assert wanted <= set(replacement["loaded_in_worker"]), replacement["loaded_in_worker"]


def test_kept_alive_connections_are_closed_after_a_number_of_requests(two_workers: TfaasServer) -> None:
    """So that clients reconnect, and spread over the workers again (a replacement worker included)."""
    with requests.Session() as session:
        answers = [session.get(two_workers.url + "/v2/health/live", timeout=60) for _ in range(100)]
    assert all(a.status_code == 200 for a in answers)
    assert [a.headers.get("Connection") for a in answers[98:]] == ["keep-alive", "close"]
