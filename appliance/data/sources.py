"""Opening ROOT files, local or remote through XRootD, with errors that name the culprit.

A data set is a TTree or an RNTuple: both are read through uproot with the same calls (``iterate``,
``num_entries``); the few places where they differ (the list of columns, a column's type, its size on disk)
are answered here, so that the rest of the data layer never asks which one it holds.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import uproot
import uproot.interpretation.jagged
import uproot.interpretation.numerical

from servicecore.errors import BadInputError

# XRootD's client retries an unreachable server for minutes by default (5 tries over 120 s windows). A user
# checking a workflow wants to hear quickly that a server is down; sites can still override these.
os.environ.setdefault("XRD_CONNECTIONWINDOW", "10")
os.environ.setdefault("XRD_CONNECTIONRETRY", "1")
OPEN_TIMEOUT_S = 60


def _inflate_with_isal() -> tuple[type[BaseException], ...]:
    """Have uproot inflate ZLIB baskets with ISA-L (python-isal) instead of the standard zlib, when installed.

    Inflating is the largest single cost of reading (about 40% of pass 2 on the benchmark's files) and ISA-L
    gives the same bytes ~1.4x faster (bench/results/streaming.md). uproot reads the choice from its ZLIB
    decompressor's ``library`` (``"zlib"``, ``"isal"`` or ``"deflate"``); it is set on the decompressor object
    only, so files the appliance writes (friend trees, synthetic data) keep the standard zlib. Returns the
    errors a damaged basket raises.
    """
    try:
        from isal import isal_zlib
    except ImportError:
        return (zlib.error,)
    decompressor = getattr(uproot.compression, "_decompress_ZLIB", None)
    if getattr(decompressor, "library", None) != "zlib":  # another uproot: leave its choice alone
        return (zlib.error,)
    decompressor.library = "isal"  # type: ignore[union-attr]
    return (zlib.error, isal_zlib.error)


# What inflating a damaged basket raises: zlib's error, and ISA-L's where it inflates.
INFLATE_ERRORS = _inflate_with_isal()


@dataclass
class Source:
    """One input file of the workflow and the part of it that is read."""

    index: int
    url: str
    entries: int  # entries in the tree
    entry_stop: int  # entries read: all, or this file's share of nevts
    label: int | None


def open_tree(url: str, tree: str) -> Any:
    """Open ``url`` and return its TTree or RNTuple ``tree`` (which may be ``dir/tree``)."""
    local = Path(url)
    if local.is_file():
        with local.open("rb") as f:
            if f.read(4) != b"root":
                raise BadInputError(f"{url!r} is not a ROOT file")
    try:
        handle = uproot.open(url, timeout=OPEN_TIMEOUT_S)
    except FileNotFoundError:
        raise BadInputError(f"input file {url!r} does not exist") from None
    except (OSError, TimeoutError) as err:
        raise BadInputError(f"cannot open {url!r}: {_first_line(err)}") from None
    except ValueError as err:
        raise BadInputError(f"{url!r} is not a ROOT file: {_first_line(err)}") from None
    try:
        obj = handle[tree]
    except uproot.KeyInFileError:
        trees = sorted(
            {k.split(";")[0] for k, c in handle.classnames().items() if c.startswith(DATASET_CLASSES)}
        )
        raise BadInputError(
            f"tree {tree!r} not found in {url!r}; trees there: {', '.join(trees) or 'none'}"
        ) from None
    if not isinstance(obj, uproot.behaviors.TTree.TTree | uproot.behaviors.RNTuple.RNTuple):
        raise BadInputError(f"{tree!r} in {url!r} is a {type(obj).__name__}, not a TTree or an RNTuple")
    return obj


DATASET_CLASSES = ("TTree", "ROOT::RNTuple", "ROOT::Experimental::RNTuple")


def is_rntuple(tree: Any) -> bool:
    return isinstance(tree, uproot.behaviors.RNTuple.RNTuple)


def column_kinds(tree: Any) -> dict[str, str | None]:
    """Every top-level branch (TTree) or field (RNTuple) in file order, with its :func:`branch_kind`."""
    if is_rntuple(tree):
        return {field.name: field_kind(field) for field in tree.fields}
    return {branch.name: branch_kind(branch) for branch in tree.branches}


def column_type(tree: Any, name: str) -> str:
    """The C++ type of a column as the file declares it, for error messages."""
    return tree[name].typename or "a record of fields"


def compressed_bytes(tree: Any, names: list[str]) -> float:
    """Bytes on disk of the named columns. uproot gives no per-field size for an RNTuple: the file's size
    shared evenly among its fields is the estimate there (it only scales the reported MB/s)."""
    if is_rntuple(tree):
        return float(tree.file.fEND) * len(names) / max(len(tree.fields), 1)
    return float(sum(tree[name].compressed_bytes for name in names))


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:300]


def branch_kind(branch: Any) -> str | None:
    """ "flat" for one number per event, "jagged" for a list of numbers, None for what a model cannot take."""
    interpretation = branch.interpretation
    if isinstance(interpretation, uproot.interpretation.numerical.AsDtype):
        return (
            "flat" if interpretation.inner_shape == () and interpretation.from_dtype.kind in "biuf" else None
        )
    if isinstance(interpretation, uproot.interpretation.jagged.AsJagged):
        content = interpretation.content
        if isinstance(content, uproot.interpretation.numerical.AsDtype) and content.inner_shape == ():
            return "jagged" if content.from_dtype.kind in "biuf" else None
    return None


def field_kind(field: Any) -> str | None:
    """:func:`branch_kind` for an RNTuple field, read from the awkward form uproot gives it."""
    form, _ = field.to_akform()
    form = form.contents[0] if isinstance(form, ak.forms.RecordForm) and len(form.contents) == 1 else form
    if isinstance(form, ak.forms.NumpyForm):
        return "flat" if form.inner_shape == () and _is_number(form.primitive) else None
    if (
        isinstance(form, ak.forms.ListOffsetForm | ak.forms.ListForm)
        and form.parameters.get("__array__") is None
        and isinstance(form.content, ak.forms.NumpyForm)
        and form.content.inner_shape == ()
        and form.content.parameters.get("__array__") is None
    ):
        return "jagged" if _is_number(form.content.primitive) else None
    return None


def _is_number(primitive: str) -> bool:
    return primitive == "bool" or primitive.startswith(("int", "uint", "float"))


def iterate(
    tree: Any,
    branches: list[str],
    step: int,
    entry_start: int,
    entry_stop: int,
    url: str,
    decompression_executor: Executor | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(first entry, {branch: array})`` chunks of ``step`` entries between start and stop.

    ``decompression_executor`` decompresses a step's baskets side by side (uproot's; None: in this thread).
    """
    if entry_stop <= entry_start:
        return
    try:
        for arrays in tree.iterate(
            branches,
            step_size=max(1, step),
            entry_start=entry_start,
            entry_stop=entry_stop,
            decompression_executor=decompression_executor,
            library="ak",
            how=dict,
        ):
            yield entry_start, arrays
            entry_start += len(next(iter(arrays.values()))) if arrays else 0
    except (OSError, TimeoutError) as err:
        raise BadInputError(f"reading {url!r} failed: {_first_line(err)}") from None
    except (*INFLATE_ERRORS, uproot.deserialization.DeserializationError) as err:
        raise BadInputError(f"{url!r} is damaged: {_first_line(err)}") from None


def entry_shares(entries: list[int], nevts: int) -> list[int]:
    """Entries to read per file: all, or ``nevts`` split over the files in proportion to their size."""
    total = sum(entries)
    if nevts < 0 or nevts >= total:
        return list(entries)
    shares = np.floor(np.asarray(entries, dtype=np.float64) * nevts / total).astype(np.int64)
    # Hand the rounding remainder to the largest files so that exactly nevts are read.
    for i in np.argsort(entries)[::-1][: nevts - int(shares.sum())]:
        shares[i] += 1
    return [int(min(s, e)) for s, e in zip(shares, entries, strict=True)]
