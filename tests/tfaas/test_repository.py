"""The repository under a running server: hot reload, versions, uploads, deletes, bad uploads."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from servicecore.publishing import publish
from tests.tfaas.bundles import reference_predict
from tests.tfaas.conftest import populate
from tests.tfaas.server import TfaasServer, tfaas_server

ROW = [0.3, -1.2, 2.0, 0.7]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, bundle_sources: dict[str, Path]) -> Iterator[TfaasServer]:
    """One worker, so that what a request changes is what the next request sees; small upload limits.

    No auth settings on loopback: the callers are the demo user ``local``, who owns ``local.*`` only.
    """
    base = tmp_path_factory.mktemp("live")
    repo = populate(base / "models", bundle_sources)
    env = {"TFAAS_MAX_UPLOAD_BYTES": str(8 << 20), "TFAAS_MAX_UPLOAD_MEMBERS": "200"}
    with tfaas_server(repo, base, workers=1, env=env) as server:
        server.warm("small")
        yield server


@pytest.fixture(scope="module")
def outputs(bundle_sources: dict[str, Path]) -> dict[str, np.ndarray]:
    x = np.array([ROW], dtype=np.float32)
    return {name: reference_predict(bundle_sources[name], x)[0] for name in ("small_v1", "small_v2")}


def eventually(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)


def predict(server: TfaasServer, model: str, **extra: object) -> np.ndarray:
    response = server.post("/json", json={"model": model, "values": ROW, **extra})
    assert response.status_code == 200, response.text
    return np.asarray(response.json())


def tree(path: Path) -> dict[str, int]:
    """Every file under the repository (but the staging area) with its size: to show nothing changed."""
    return {
        str(p.relative_to(path)): p.stat().st_size
        for p in path.rglob("*")
        if p.is_file() and ".incoming" not in p.parts
    }


def named(source: Path, name: str, workdir: Path) -> Path:
    """A copy of a bundle whose params.json carries another model name."""
    target = workdir / f"{name}-{source.name}"
    shutil.copytree(source, target)
    params = json.loads((target / "params.json").read_text())
    (target / "params.json").write_text(json.dumps({**params, "name": name}))
    return target


def tar_of(directory: Path, top: str, extra: Callable[[tarfile.TarFile], None] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(directory, arcname=top)
        if extra:
            extra(archive)
    return buffer.getvalue()


# -- hot reload and versions --


def test_new_version_replaces_the_old_and_old_versions_stay_addressable(
    live: TfaasServer, bundle_sources: dict[str, Path], outputs: dict[str, np.ndarray]
) -> None:
    assert np.allclose(predict(live, "small"), outputs["small_v1"], rtol=1e-5)
    _, version = publish(bundle_sources["small_v2"], live.repo, "small")
    assert version == 2
    eventually(lambda: np.allclose(predict(live, "small"), outputs["small_v2"], rtol=1e-5))
    assert np.allclose(predict(live, "small", version=1), outputs["small_v1"], rtol=1e-5)
    pinned = live.post("/v1/models/small/versions/1:predict", json={"instances": [ROW]}).json()
    assert np.allclose(pinned["predictions"][0], outputs["small_v1"], rtol=1e-5)
    status = live.get("/v1/models/small").json()["model_version_status"]
    assert [s["version"] for s in status] == ["2", "1"]
    assert live.get("/v2/models/small").json()["versions"] == ["1", "2"]


def test_requests_during_a_switch_all_succeed_on_one_version_or_the_other(
    live: TfaasServer, bundle_sources: dict[str, Path], outputs: dict[str, np.ndarray]
) -> None:
    publish(bundle_sources["small_v1"], live.repo, "switch")
    eventually(lambda: live.post("/json", json={"model": "switch", "values": ROW}).status_code == 200)
    answers: list[tuple[int, object]] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            response = live.post("/json", json={"model": "switch", "values": ROW})
            answers.append((response.status_code, response.json()))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    publish(bundle_sources["small_v2"], live.repo, "switch")
    eventually(lambda: any(np.allclose(a, outputs["small_v2"], rtol=1e-5) for _, a in answers[-5:]))
    stop.set()
    for t in threads:
        t.join()
    assert answers and all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200][:3]
    for _, answer in answers:
        assert np.allclose(answer, outputs["small_v1"], rtol=1e-5) or np.allclose(
            answer, outputs["small_v2"], rtol=1e-5
        )


def test_new_model_appears_and_a_deleted_one_disappears(
    live: TfaasServer, bundle_sources: dict[str, Path]
) -> None:
    shutil.copytree(bundle_sources["small_v1"], live.repo / ".tmp-fresh")
    (live.repo / ".tmp-fresh").rename(live.repo / "fresh")  # an original-style bundle dropped in by hand
    eventually(lambda: "fresh" in {m["name"] for m in live.get("/models").json()})
    assert live.post("/json", json={"model": "fresh", "values": ROW}).status_code == 200
    shutil.rmtree(live.repo / "fresh")
    eventually(lambda: live.post("/json", json={"model": "fresh", "values": ROW}).status_code == 404)
    assert "fresh" not in {m["name"] for m in live.get("/models").json()}


def test_original_style_bundle_overwritten_in_place_is_reloaded(
    live: TfaasServer, bundle_sources: dict[str, Path], outputs: dict[str, np.ndarray]
) -> None:
    """The Go server kept serving the old graph after a re-upload; here the new files are picked up."""
    target = live.repo / "inplace"
    shutil.copytree(bundle_sources["small_v1"], target)
    eventually(lambda: live.post("/json", json={"model": "inplace", "values": ROW}).status_code == 200)
    assert np.allclose(predict(live, "inplace"), outputs["small_v1"], rtol=1e-5)
    shutil.rmtree(target / "variables")
    shutil.copytree(bundle_sources["small_v2"] / "variables", target / "variables")
    shutil.copy2(bundle_sources["small_v2"] / "saved_model.pb", target / "saved_model.pb")
    eventually(lambda: np.allclose(predict(live, "inplace"), outputs["small_v2"], rtol=1e-5))


# -- uploads --


def test_tar_bundle_upload_publishes_a_new_version(
    live: TfaasServer, bundle_sources: dict[str, Path], outputs: dict[str, np.ndarray], tmp_path: Path
) -> None:
    response = live.post(
        "/upload",
        data=tar_of(named(bundle_sources["small_v2"], "local.uploaded", tmp_path), "local.uploaded"),
        headers={"Content-Type": "application/gzip"},
    )
    assert response.status_code == 201, response.text
    assert response.json() == {"model": "local.uploaded", "version": 1}
    assert np.allclose(predict(live, "local.uploaded"), outputs["small_v2"], rtol=1e-5)
    again = live.post(
        "/upload",
        data=tar_of(named(bundle_sources["small_v1"], "local.uploaded", tmp_path), "local.uploaded"),
        headers={"Content-Type": "application/x-tar"},
    )
    assert again.json()["version"] == 2
    # the worker that took the upload rescans at once: no stale model, no waiting
    assert np.allclose(predict(live, "local.uploaded"), outputs["small_v1"], rtol=1e-5)
    assert live.get("/params/local.uploaded").json()["version"] == 2


def test_multipart_upload_of_the_original_form(
    live: TfaasServer, bundle_sources: dict[str, Path], outputs: dict[str, np.ndarray], tmp_path: Path
) -> None:
    source = bundle_sources["small_v2"]
    model_tar = io.BytesIO()
    with tarfile.open(fileobj=model_tar, mode="w:gz") as archive:
        for entry in ("saved_model.pb", "variables", "assets", "fingerprint.pb"):
            if (source / entry).exists():
                archive.add(source / entry, arcname=entry)
    params = {"name": "local.form", "input_name": "inputs", "output_name": "outputs"}
    response = live.post(
        "/upload",
        data={"name": "local.form"},
        files={
            "params": ("params.json", json.dumps(params)),
            "labels": ("labels.txt", "first\nsecond\n"),
            "model": ("model.tar.gz", model_tar.getvalue()),
        },
    )
    assert response.status_code == 201, response.text
    assert np.allclose(predict(live, "local.form"), outputs["small_v2"], rtol=1e-5)
    from tfaas import proto

    row = proto.Row(value=ROW, model="local.form").SerializeToString()
    labels = [p.label for p in proto.Predictions.FromString(live.post("/proto", data=row).content).prediction]
    assert labels == ["first", "second"]


def _bad_member(kind: str) -> Callable[[tarfile.TarFile], None]:
    def add(archive: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(
            {"dotdot": "evil/../../escape.txt", "absolute": "/tmp/tfaas-escape.txt"}.get(kind, "evil/x")
        )
        data = b"x"
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        elif kind == "hardlink":
            info.type, info.linkname = tarfile.LNKTYPE, "evil/params.json"
        elif kind == "device":
            info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
        if info.type == tarfile.REGTYPE:
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        else:
            archive.addfile(info)

    return add


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink", "device"])
def test_unsafe_tar_uploads_are_refused_and_change_nothing(
    live: TfaasServer, bundle_sources: dict[str, Path], kind: str
) -> None:
    before = tree(live.repo)
    body = tar_of(bundle_sources["small_v1"], "evil", _bad_member(kind))
    response = live.post("/upload", data=body, headers={"Content-Type": "application/gzip"})
    assert response.status_code == 400, response.text
    assert "error" in response.json()
    assert tree(live.repo) == before
    assert not list((live.repo / ".incoming").glob("upload-*"))
    assert not Path("/tmp/tfaas-escape.txt").exists()
    assert not (live.repo.parent / "escape.txt").exists()
    assert live.get("/params/evil").status_code == 404


def test_upload_size_limits(live: TfaasServer, bundle_sources: dict[str, Path]) -> None:
    before = tree(live.repo)
    too_big = live.post("/upload", data=b"\0" * (9 << 20), headers={"Content-Type": "application/x-tar"})
    assert too_big.status_code == 413 and "too large" in too_big.json()["error"]

    def bomb(archive: tarfile.TarFile) -> None:  # 64 MiB of zeros unpacked, a few kB sent
        info = tarfile.TarInfo("bomb/zeros.bin")
        info.size = 64 << 20
        archive.addfile(info, io.BytesIO(bytes(info.size)))

    unpacked = live.post("/upload", data=tar_of(bundle_sources["small_v1"], "bomb", bomb),
                         headers={"Content-Type": "application/gzip"})  # fmt: skip
    assert unpacked.status_code == 400 and "more than" in unpacked.json()["error"]

    def many(archive: tarfile.TarFile) -> None:
        for i in range(250):
            info = tarfile.TarInfo(f"many/f{i}")
            archive.addfile(info, io.BytesIO(b""))

    members = live.post("/upload", data=tar_of(bundle_sources["small_v1"], "many", many),
                        headers={"Content-Type": "application/gzip"})  # fmt: skip
    assert members.status_code == 400 and "members" in members.json()["error"]
    assert tree(live.repo) == before


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: (d / "params.json").write_text(json.dumps({"name": "someone.else"})), "names the model"),
        (lambda d: (d / "params.json").unlink(), "no params.json"),
        (lambda d: (d / "params.json").write_text("{broken"), "not valid JSON"),
        (lambda d: (d / "saved_model.pb").write_bytes(b"garbage"), "not a loadable SavedModel"),
        (lambda d: (d / "params.json").write_text(json.dumps({"features": {"format": "x"}})), "feature spec"),
    ],
    ids=["name-mismatch", "no-params", "bad-params", "bad-model", "bad-features"],
)
def test_bad_bundles_are_refused_and_change_nothing(
    live: TfaasServer, bundle_sources: dict[str, Path], tmp_path: Path, mutate: Callable, message: str
) -> None:
    bundle = named(bundle_sources["small_v1"], "local.candidate", tmp_path)
    mutate(bundle)
    before = tree(live.repo)
    response = live.post(
        "/upload", data=tar_of(bundle, "local.candidate"), headers={"Content-Type": "application/gzip"}
    )
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]
    assert tree(live.repo) == before
    assert live.get("/params/local.candidate").status_code == 404


@pytest.mark.parametrize(
    ("kwargs", "status", "message"),
    [
        ({"data": b"name=x", "headers": {"Content-Type": "application/json"}}, 415, "content type"),
        ({"data": b"not a tar", "headers": {"Content-Type": "application/gzip"}}, 400, "not a valid tar"),
        ({"data": {"name": "../etc"}, "files": {"model": ("m", b"x")}}, 400, "not valid"),
        ({"data": {"name": "x"}, "files": {"params": ("params.json", "{}")}}, 400, "'model' file"),
        ({"files": {"model": ("m", b"x")}}, 400, "'name' field"),
    ],
    ids=["json", "garbage-tar", "bad-name", "no-model", "no-name"],
)
def test_malformed_uploads(live: TfaasServer, kwargs: dict, status: int, message: str) -> None:
    response = live.post("/upload", **kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


# -- deletes --


def test_delete_by_path_and_by_form_field(live: TfaasServer, bundle_sources: dict[str, Path]) -> None:
    publish(bundle_sources["small_v1"], live.repo, "local.doomed")
    publish(bundle_sources["small_v2"], live.repo, "local.doomed")
    publish(bundle_sources["small_v1"], live.repo, "local.doomed2")
    eventually(lambda: live.get("/params/local.doomed2").status_code == 200)
    one = live.delete("/delete/local.doomed?version=2")
    assert one.status_code == 200 and one.json() == {"deleted": "local.doomed", "versions": [2]}
    assert live.get("/params/local.doomed").json()["version"] == 1
    assert live.delete("/delete/local.doomed").json()["versions"] == [1]
    assert live.post("/json", json={"model": "local.doomed", "values": ROW}).status_code == 404
    assert live.delete("/delete", files={"model": (None, "local.doomed2")}).status_code == 200
    assert live.get("/params/local.doomed2").status_code == 404
    assert live.delete("/delete/local.doomed").status_code == 404
    assert live.delete("/delete").status_code == 400
    # a deleted version number is never handed out again
    _, version = publish(bundle_sources["small_v1"], live.repo, "local.doomed")
    assert version == 3
