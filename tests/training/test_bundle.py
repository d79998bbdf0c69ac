"""Publishing bundles into a model repository: new versions, atomic renames, nothing half-written."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

from appliance.training import bundle
from appliance.training.bundle import check_output_directory
from servicecore import naming, publishing
from servicecore.errors import BadInputError
from servicecore.naming import next_version
from servicecore.publishing import publish


def fake_bundle(path: Path, marker: str = "a") -> Path:
    """A directory with the files publishing handles; publishing does not look inside the SavedModel."""
    path.mkdir(parents=True)
    (path / "saved_model.pb").write_text(marker)
    (path / "variables").mkdir()
    (path / "variables" / "variables.index").write_text(marker)
    (path / "params.json").write_text(json.dumps(bundle.params_document("draft", {"dim": 3})))
    return path


def test_each_publication_gets_the_next_version_and_keeps_the_earlier_ones(tmp_path):
    repo = tmp_path / "models"
    first, v1 = publish(fake_bundle(tmp_path / "b1", "one"), repo, "alice.higgs")
    second, v2 = publish(fake_bundle(tmp_path / "b2", "two"), repo, "alice.higgs")
    assert (v1, v2) == (1, 2)
    assert first == repo / "alice.higgs" / "1" and second == repo / "alice.higgs" / "2"
    assert (first / "saved_model.pb").read_text() == "one"
    assert (second / "saved_model.pb").read_text() == "two"
    params = json.loads((second / "params.json").read_text())
    assert params["version"] == 2 and params["name"] == "alice.higgs"
    assert params["inputNode"] == params["input_name"] == "inputs"
    assert params["outputNode"] == params["output_name"] == "outputs"
    assert list((repo / ".incoming").iterdir()) == []


def test_a_deleted_version_number_is_not_reused(tmp_path):
    repo = tmp_path / "models"
    for i in range(3):
        publish(fake_bundle(tmp_path / f"b{i}"), repo, "m")
    shutil.rmtree(repo / "m" / "3")
    assert next_version(repo / "m") == 4
    assert publish(fake_bundle(tmp_path / "b9"), repo, "m")[1] == 4


def test_concurrent_publishers_never_share_a_version(tmp_path):
    repo = tmp_path / "models"
    bundles = [fake_bundle(tmp_path / f"b{i}", str(i)) for i in range(8)]
    results: list[int] = []
    barrier = threading.Barrier(len(bundles))

    def run(path: Path) -> None:
        barrier.wait()
        results.append(publish(path, repo, "race")[1])

    threads = [threading.Thread(target=run, args=(b,)) for b in bundles]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(1, 9))
    markers = sorted((repo / "race" / str(v) / "saved_model.pb").read_text() for v in results)
    assert markers == [str(i) for i in range(8)]


def test_a_publisher_losing_the_race_takes_the_next_number(tmp_path, monkeypatch):
    repo = tmp_path / "models"
    publish(fake_bundle(tmp_path / "b0"), repo, "m")
    real_next = publishing.next_version
    calls = []

    def stale_next(model_dir: Path) -> int:
        calls.append(1)
        return 1 if len(calls) == 1 else real_next(model_dir)  # first answer is stale: version 1 exists

    monkeypatch.setattr(publishing, "next_version", stale_next)
    path, version = publish(fake_bundle(tmp_path / "b1", "new"), repo, "m")
    assert version == 2 and (path / "saved_model.pb").read_text() == "new"
    assert (repo / "m" / "1" / "saved_model.pb").read_text() == "a"  # never overwritten


def test_a_failed_publication_leaves_nothing_in_the_repository(tmp_path, monkeypatch):
    repo = tmp_path / "models"
    source = fake_bundle(tmp_path / "b")

    def broken_copy(src, dst, **kwargs):
        Path(dst).write_text("half")
        raise OSError("disk full")

    monkeypatch.setattr(publishing.shutil, "copyfile", broken_copy)
    with pytest.raises(OSError, match="disk full"):
        publish(source, repo, "m")
    assert list((repo / ".incoming").iterdir()) == []
    assert naming.versions(repo / "m") == []


@pytest.mark.parametrize("name", ["../evil", "a/b", "", ".hidden", "x" * 200, "a..b"])
def test_model_names_that_could_escape_or_hide_are_refused(tmp_path, name):
    with pytest.raises(BadInputError, match="model name"):
        publish(fake_bundle(tmp_path / "b"), tmp_path / "models", name)


def test_output_directory_with_other_files_is_refused_but_an_earlier_bundle_is_not(tmp_path):
    check_output_directory(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    check_output_directory(tmp_path / "empty")
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "chapter1.tex").write_text("precious")
    with pytest.raises(BadInputError, match="not empty and holds no model bundle"):
        check_output_directory(tmp_path / "thesis")
    check_output_directory(fake_bundle(tmp_path / "old"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(BadInputError, match="not a directory"):
        check_output_directory(tmp_path / "file")


def test_a_published_version_is_readable_by_the_repository_group(tmp_path):
    """TFaaS runs as another user of the models group: a version folder must not keep mkdtemp's 0700."""
    import os

    source = fake_bundle(tmp_path / "b", "x")
    source.chmod(0o700)  # as a bundle built in a mkdtemp directory
    repo = tmp_path / "models"
    repo.mkdir()
    os.chown(repo, -1, 65534)  # a shared group, as the role sets up (mlaas4hep-models)
    repo.chmod(0o2770)
    old = os.umask(0o007)  # what the appliance's units set
    try:
        published, _ = publish(source, repo, "alice.higgs")
    finally:
        os.umask(old)
    assert published.stat().st_mode & 0o777 == 0o770
    for path in [published, *published.rglob("*")]:
        assert path.stat().st_gid == 65534, path  # readable through the group by TFaaS


def test_publishing_copies_no_folder_mode(tmp_path):
    """Folders staged in a setgid repository inherit the bit; copying a source folder's mode onto them is a
    chmod of that bit, which the services' RestrictSUIDSGID refuses (TFaaS uploads failed with EPERM)."""
    source = fake_bundle(tmp_path / "b")
    (source / "variables" / "variables.index").write_text("index")
    (source / "variables").chmod(0o2700)
    target, _ = publish(source, tmp_path / "models", "m")
    assert (target / "variables" / "variables.index").read_text() == "index"
    assert (target / "variables").stat().st_mode & 0o7777 != 0o2700  # the mode was not copied
