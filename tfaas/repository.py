"""The model repository on disk: ``<name>/<version>/`` bundles and original-style ``<name>/`` bundles.

A scan is cheap (a few ``stat`` calls per version; ``params.json`` is re-read only when a bundle's fingerprint
changes), so every worker rescans on a short interval and so sees new, changed and deleted models without a
restart. Writes never leave a half-written model: uploads are staged in ``.incoming/`` on the same file system
and published by :func:`servicecore.publishing.publish` with one
rename; deletions rename the model away first.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from servicecore.errors import BadInputError, NotFoundError
from servicecore.naming import HIGH_WATER, check_name, record_high_water
from servicecore.publishing import INCOMING, publish

log = logging.getLogger(__name__)

SAVED_MODEL = "saved_model.pb"
ONNX_MODEL = "model.onnx"
# Either file makes a folder a bundle: a SavedModel, or the ONNX export of a non-Keras model (params.json
# says "runtime": "onnx").
MODEL_FILES = (SAVED_MODEL, ONNX_MODEL)
FINGERPRINT_FILES = (*MODEL_FILES, "params.json", "labels.txt", "variables/variables.index")


class ModelNotFoundError(NotFoundError):
    """An unknown model or version (HTTP 404, like every ``NotFoundError``)."""


@dataclass(frozen=True)
class Bundle:
    name: str
    version: int
    path: Path
    params: dict[str, Any] = field(hash=False)
    labels: tuple[str, ...]
    fingerprint: tuple[Any, ...]

    def describe(self) -> dict[str, Any]:
        """The bundle's ``params.json`` as clients see it, with its name and version filled in."""
        return {**self.params, "name": self.name, "version": self.version}


Snapshot = dict[str, dict[int, Bundle]]


class ModelRepository:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).absolute()
        self.root.mkdir(parents=True, exist_ok=True)
        self._known: dict[Path, Bundle] = {}

    def scan(self) -> Snapshot:
        """Every servable bundle now on disk, by name and version; broken bundles are skipped and logged."""
        snapshot: Snapshot = {}
        known: dict[Path, Bundle] = {}
        for model_dir in self._model_dirs():
            versions = self._version_dirs(model_dir)
            for version, path in versions.items():
                fingerprint = _fingerprint(path)
                if fingerprint is None:
                    continue
                bundle = self._known.get(path)
                if bundle is None or bundle.fingerprint != fingerprint:
                    try:
                        bundle = read_bundle(model_dir.name, version, path, fingerprint)
                    except BadInputError as err:
                        log.warning("skipping %s: %s", path, err)
                        continue
                known[path] = bundle
                snapshot.setdefault(model_dir.name, {})[version] = bundle
        self._known = known
        return snapshot

    def _model_dirs(self) -> Iterator[Path]:
        with contextlib.suppress(FileNotFoundError):
            for entry in sorted(self.root.iterdir()):
                if entry.name.startswith(".") or not entry.is_dir():
                    continue
                try:
                    check_name(entry.name)
                except BadInputError:
                    continue
                yield entry

    @staticmethod
    def _version_dirs(model_dir: Path) -> dict[int, Path]:
        versions: dict[int, Path] = {}
        if _servable(model_dir):
            versions[1] = model_dir  # an original-style bundle is version 1
        with contextlib.suppress(FileNotFoundError, NotADirectoryError, PermissionError):
            for entry in model_dir.iterdir():
                if entry.name.isdigit() and int(entry.name) > 0 and _servable(entry):
                    versions[int(entry.name)] = entry
        return versions

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh directory on the repository's file system, removed when the block ends."""
        incoming = self.root / INCOMING
        incoming.mkdir(exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix="upload-", dir=incoming))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def publish(self, bundle_dir: Path, name: str) -> tuple[Path, int]:
        """Publish a complete, checked bundle as the next version of ``name``."""
        return publish(bundle_dir, self.root, check_name(name))

    def delete(self, name: str, version: int | None = None) -> list[int]:
        """Remove a model (every version) or one version; version numbers are never handed out again."""
        check_name(name)
        model_dir = self.root / name
        existing = self._version_dirs(model_dir)
        doomed = sorted(existing) if version is None else [version]
        if not existing or any(v not in existing for v in doomed):
            what = f"model {name!r}" if version is None else f"version {version} of model {name!r}"
            raise ModelNotFoundError(f"{what} does not exist")
        record_high_water(model_dir, max(existing))
        trash = Path(tempfile.mkdtemp(prefix="deleted-", dir=self._incoming()))
        try:
            for v in doomed:
                path = existing[v]
                if path == model_dir:  # original-style: its files live beside the version folders
                    for model_file in MODEL_FILES:  # stops serving at once
                        with contextlib.suppress(FileNotFoundError):
                            (model_dir / model_file).rename(trash / model_file)
                    for entry in model_dir.iterdir():
                        if not entry.name.isdigit() and entry.name != HIGH_WATER:
                            entry.rename(trash / entry.name)
                else:
                    path.rename(trash / str(v))
        finally:
            shutil.rmtree(trash, ignore_errors=True)
        return doomed

    def _incoming(self) -> Path:
        incoming = self.root / INCOMING
        incoming.mkdir(exist_ok=True)
        return incoming


def read_bundle(name: str, version: int, path: Path, fingerprint: tuple[Any, ...] | None = None) -> Bundle:
    params_file = path / "params.json"
    params: dict[str, Any] = {}
    if params_file.is_file():
        try:
            params = json.loads(params_file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise BadInputError(f"params.json of {name!r} is not valid JSON: {err}") from None
        if not isinstance(params, dict):
            raise BadInputError(f"params.json of {name!r} must hold a JSON object")
    labels_file = path / str(params.get("labels") or "labels.txt")
    labels: tuple[str, ...] = ()
    if labels_file.is_file() and labels_file.resolve().is_relative_to(path.resolve()):
        lines = labels_file.read_text(errors="replace").splitlines()
        labels = tuple(line.strip() for line in lines if line.strip())
    return Bundle(name, version, path, params, labels, fingerprint or _fingerprint(path) or ())


def _servable(path: Path) -> bool:
    """A readable SavedModel or ONNX model is there; an unreadable bundle (wrong owner or mode) is skipped,
    not a 500. A bundle whose params.json says ``"servable": false`` is listed all the same: predicting with
    it answers 409 with the reason the training recorded."""
    try:
        return any((path / model_file).is_file() for model_file in MODEL_FILES)
    except PermissionError:
        log.warning("skipping %s: not readable by this service", path)
        return False


def _fingerprint(path: Path) -> tuple[Any, ...] | None:
    """Identity and timestamps of the files that make a bundle; None if it vanished meanwhile."""
    parts: list[Any] = []
    for relative in FINGERPRINT_FILES:
        try:
            st = (path / relative).stat()
        except (FileNotFoundError, PermissionError):
            parts.append(None)
            continue
        parts.append((st.st_ino, st.st_mtime_ns, st.st_size))
    if all(part is None for part in parts[: len(MODEL_FILES)]):
        return None
    return tuple(parts)
