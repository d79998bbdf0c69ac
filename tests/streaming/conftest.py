import json
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot


def write_tree(path: Path, tree: str = "Events", **branches) -> Path:
    """A TTree (mktree + extend, as experiments ship) with exactly the given values."""
    data = {k: (v if isinstance(v, ak.Array) else np.asarray(v)) for k, v in branches.items()}
    with uproot.recreate(path) as f:
        f.mktree(tree, {k: (v.type if isinstance(v, ak.Array) else v.dtype) for k, v in data.items()})
        f[tree].extend(data)
    return path


@pytest.fixture
def tiny_files(tmp_path):
    """Two hand-made files whose every value is known."""
    a = write_tree(
        tmp_path / "a.root",
        run=np.array([1, 1, 1, 1], np.int32),
        event=np.array([1, 2, 3, 4], np.int64),
        x=np.array([1.0, 2.0, 3.0, 4.0]),
        j=ak.Array([[1.0, 2.0, 3.0], [], [4.0], [5.0, 6.0]]),
    )
    b = write_tree(
        tmp_path / "b.root",
        run=np.array([2, 2], np.int32),
        event=np.array([5, 6], np.int64),
        x=np.array([5.0, 9.0]),
        j=ak.Array([[0.0], [8.0, 7.0, 6.0, 5.0]]),
    )
    return a, b


def write_workflow(directory: Path, files, labels="1\n0\n", params=None, preproc=None):
    """Write files.txt, labels.txt, params.json (and preproc.json); return the CLI-style paths."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "files.txt").write_text("# input files\n" + "\n".join(str(f) for f in files) + "\n")
    (directory / "labels.txt").write_text(labels)
    # uproot writes a counter branch "nj" beside the jagged "j"; the exact-value tests leave it out.
    defaults = {"chunk_size": 1000, "epochs": 1, "exclude_branches": ["nj"]}
    (directory / "params.json").write_text(json.dumps({**defaults, **(params or {})}))
    paths = {
        "files": str(directory / "files.txt"),
        "labels": str(directory / "labels.txt"),
        "params": str(directory / "params.json"),
        "preproc": None,
        "specs": str(directory / "specs.json"),
    }
    if preproc is not None:
        (directory / "preproc.json").write_text(json.dumps(preproc))
        paths["preproc"] = str(directory / "preproc.json")
    return paths
