"""The user's workflow: files list, labels, ``params.json`` and ``preproc.json``, read and validated.

One piece although above 400 lines: every input of a workflow is checked here, together and before any data is
read, so that the rules about one key (a weight, a target, a label) sit beside those about the others.

The keys and their meaning are the original MLaaS4HEP's, so existing workflows keep working. Everything is
checked here, before any data is read, and every problem raises :class:`BadInputError` naming the culprit.
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from appliance.data.expressions import Expression
from servicecore.errors import BadInputError

URL_SCHEMES = ("root://", "roots://", "http://", "https://", "file://", "xroot://", "xroots://")
DEFAULT_IDENTIFIERS = ("run", "event", "luminosityBlock")
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
NEGATIVE_WEIGHTS = ("refuse", "abs", "zero")


@dataclass
class Params:
    """``params.json``. Original keys first; the others are this appliance's additions."""

    nevts: int = -1  # -1 = all, else split over the files in proportion to their size
    chunk_size: int = 1000  # events per streamed chunk; -1 = everything at once
    epochs: int = 10
    batch_size: int = 100
    shuffle: bool = True
    split: float = 0.2  # held-out test fraction (the original's 64/16/20 with validation_split 0.2)
    branch: str = "Events"  # the TTree, may be "dir/tree"
    selected_branches: list[str] = field(default_factory=list)  # empty = all; glob patterns allowed
    exclude_branches: list[str] = field(default_factory=list)
    identifier: list[str] = field(default_factory=lambda: list(DEFAULT_IDENTIFIERS))
    redirector: str = ""
    nan: float = 0.0  # value of padded slots and non-finite values after normalisation
    verbose: int = 0
    hist: str = ""
    metrics: list[str] = field(default_factory=list)
    training: dict[str, Any] = field(default_factory=dict)
    # Additions.
    seed: int = 12345
    validation_split: float = 0.2
    normalisation: str = "minmax"  # "minmax" (the original), "standard" or "none"
    jagged_length: Any = "max"  # "max", "pNN" (a quantile of list lengths), an int, or {branch: int}
    mask: bool = False  # add one 0/1 column per jagged slot
    class_weight: str = ""  # "" or "balanced"
    # Event weights and regression (issue 17, docs/training.md "Weights" and "Regression").
    weight: str = ""  # per-event weight expression, e.g. "genWeight"; "" = every event weighs 1
    cross_section: list[float] = field(default_factory=list)  # one per file: xs * luminosity / sum of weights
    luminosity: float = 1.0
    file_weight: list[float] = field(default_factory=list)  # one factor per file
    negative_weights: str = "refuse"  # what the loss does with negative weights: refuse, abs or zero
    target: list[str] = field(default_factory=list)  # regression target branches; empty = classification
    read_threads: int = 0  # threads reading the stream; 0 = the cores this process may use (its affinity)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "params.json") -> Params:
        if not isinstance(data, Mapping):
            raise BadInputError(f"{source}: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BadInputError(
                f"{source}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}"
            )
        values: dict[str, Any] = dict(data)
        for key in ("selected_branches", "exclude_branches", "identifier", "metrics", "target"):
            if key in values:
                values[key] = _name_list(values[key], f"{source}: {key}")
        params = cls(**values)
        params._validate(source)
        return params

    def _validate(self, source: str) -> None:
        def check(condition: bool, message: str) -> None:
            if not condition:
                raise BadInputError(f"{source}: {message}")

        for key in ("nevts", "chunk_size", "epochs", "batch_size", "verbose", "seed", "read_threads"):
            value = getattr(self, key)
            check(
                isinstance(value, int) and not isinstance(value, bool),
                f"{key} must be an integer, got {value!r}",
            )
        check(self.nevts == -1 or self.nevts > 0, f"nevts must be -1 (all) or positive, got {self.nevts}")
        check(
            self.chunk_size == -1 or self.chunk_size > 0,
            f"chunk_size must be -1 or positive, got {self.chunk_size}",
        )
        check(self.epochs > 0, f"epochs must be positive, got {self.epochs}")
        check(
            0 <= self.read_threads <= 256,
            f"read_threads must be 0 (the cores available) or 1 to 256, got {self.read_threads}",
        )
        check(self.batch_size > 0, f"batch_size must be positive, got {self.batch_size}")
        for key in ("split", "validation_split"):
            value = getattr(self, key)
            check(
                isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1,
                f"{key} must be a fraction in [0, 1), got {value!r}",
            )
        check(isinstance(self.shuffle, bool), f"shuffle must be true or false, got {self.shuffle!r}")
        check(isinstance(self.mask, bool), f"mask must be true or false, got {self.mask!r}")
        check(
            isinstance(self.branch, str) and self.branch.strip("/") != "",
            "branch (the tree name) must be set",
        )
        check(isinstance(self.redirector, str), "redirector must be a string")
        check(
            isinstance(self.nan, int | float) and not isinstance(self.nan, bool),
            f"nan must be a number, got {self.nan!r}",
        )
        check(
            self.normalisation in ("minmax", "standard", "none"),
            f"normalisation must be minmax, standard or none, got {self.normalisation!r}",
        )
        check(
            self.class_weight in ("", "balanced"),
            f'class_weight must be "" or "balanced", got {self.class_weight!r}',
        )
        check(isinstance(self.training, dict), "training must be an object")
        self._validate_weights(check, source)
        length = self.jagged_length
        if isinstance(length, dict):
            for name, value in length.items():
                check(
                    isinstance(value, int) and value >= 0,
                    f"jagged_length[{name!r}] must be a non-negative integer",
                )
        else:
            check(
                length == "max"
                or (isinstance(length, int) and not isinstance(length, bool) and length >= 0)
                or (isinstance(length, str) and re.fullmatch(r"p\d{1,2}(\.\d+)?|p100", length) is not None),
                f'jagged_length must be "max", "pNN", an integer or an object of integers, got {length!r}',
            )

    def _validate_weights(self, check: Callable[[bool, str], None], source: str) -> None:
        check(isinstance(self.weight, str), f"weight must be an expression string, got {self.weight!r}")
        if self.weight.strip():
            Expression(self.weight, where=f"{source}: weight")
        for key in ("cross_section", "file_weight"):
            values = getattr(self, key)
            check(isinstance(values, list), f"{key} must be a list with one number per file, got {values!r}")
            for value in values:
                check(
                    isinstance(value, int | float)
                    and not isinstance(value, bool)
                    and math.isfinite(value)
                    and value > 0,
                    f"{key} values must be positive numbers, got {value!r}",
                )
        check(
            isinstance(self.luminosity, int | float)
            and not isinstance(self.luminosity, bool)
            and math.isfinite(self.luminosity)
            and self.luminosity > 0,
            f"luminosity must be a positive number, got {self.luminosity!r}",
        )
        check(
            not self.cross_section or self.weight.strip() != "",
            "cross_section needs a weight expression (weight) whose sum per file normalises it",
        )
        check(
            self.negative_weights in NEGATIVE_WEIGHTS,
            f"negative_weights must be one of {', '.join(NEGATIVE_WEIGHTS)}, got {self.negative_weights!r}",
        )
        for name in self.target:
            check(NAME.match(name) is not None, f"target {name!r} is not a branch name")
        check(len(set(self.target)) == len(self.target), f"target names a branch twice: {self.target}")
        check(
            not (self.target and self.class_weight),
            "class_weight balances classes; a regression (target) has none",
        )

    @property
    def test_fraction(self) -> float:
        return float(self.split)

    @property
    def regression(self) -> bool:
        return bool(self.target)

    @property
    def weight_expression(self) -> Expression | None:
        return Expression(self.weight, where="params.json: weight") if self.weight.strip() else None


@dataclass
class Cut:
    """An event selection: a boolean expression; for jagged branches reduced per event by all/any."""

    expression: Expression
    reduce: str = ""  # "" for flat cuts, "all" or "any" for jagged ones


@dataclass
class Preproc:
    """``preproc.json``: new branches and flat and jagged cuts."""

    new_branches: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> {"def", "type"}
    cuts: list[Cut] = field(default_factory=list)
    removed: set[str] = field(default_factory=set)  # branches used only for cuts/definitions

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "preproc.json") -> Preproc:
        if not isinstance(data, Mapping):
            raise BadInputError(f"{source}: expected a JSON object")
        unknown = sorted(set(data) - {"new_branch", "flat_cut", "jagged_cut"})
        if unknown:
            raise BadInputError(
                f"{source}: unknown key(s) {', '.join(unknown)}; known: new_branch, flat_cut, jagged_cut"
            )
        pre = cls()
        for name, spec in _section(data, "new_branch", source).items():
            where = f"{source}: new_branch {name!r}"
            if not NAME.match(name):
                raise BadInputError(f"{where}: not a valid branch name")
            if "def" not in spec:
                raise BadInputError(f'{where}: missing "def"')
            kind = spec.get("type", "flat")
            if kind not in ("flat", "jagged"):
                raise BadInputError(f"{where}: type must be flat or jagged, got {kind!r}")
            Expression(spec["def"], where=where)
            pre.new_branches[name] = {"def": spec["def"], "type": kind}
            if spec.get("cut"):
                pre.cuts.append(_cut(spec["cut"], kind, where))
            if spec.get("remove"):
                pre.removed.add(name)
            pre.removed.update(_name_list(spec.get("keys_to_remove", []), f"{where}: keys_to_remove"))
        for kind in ("flat", "jagged"):
            for branch, spec in _section(data, f"{kind}_cut", source).items():
                where = f"{source}: {kind}_cut {branch!r}"
                if "cut" not in spec:
                    raise BadInputError(f'{where}: missing "cut"')
                pre.cuts.append(_cut(spec["cut"], kind, where))
                if spec.get("remove"):
                    pre.removed.add(branch)
        return pre

    @property
    def referenced_branches(self) -> set[str]:
        names: set[str] = set()
        for spec in self.new_branches.values():
            names |= Expression(spec["def"]).names
        for cut in self.cuts:
            names |= cut.expression.names
        return names - set(self.new_branches)


def _section(data: Mapping[str, Any], key: str, source: str) -> dict[str, dict[str, Any]]:
    section = data.get(key, {}) or {}
    if not isinstance(section, dict) or not all(isinstance(v, dict) for v in section.values()):
        raise BadInputError(f"{source}: {key} must map branch names to objects")
    return section


def _cut(spec: Any, kind: str, where: str) -> Cut:
    if kind == "flat":
        if not isinstance(spec, str):
            raise BadInputError(f"{where}: a flat cut is an expression string, got {spec!r}")
        return Cut(Expression(spec, where=where))
    if isinstance(spec, str):
        spec = [spec, "all"]
    if not (isinstance(spec, list) and len(spec) == 2 and spec[1] in ("all", "any")):
        raise BadInputError(f'{where}: a jagged cut is ["expression", "all"|"any"], got {spec!r}')
    return Cut(Expression(spec[0], where=where), spec[1])


def _name_list(value: Any, where: str) -> list[str]:
    """A list of names: a JSON list, a comma-separated string, or the path of a file with one per line."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        path = Path(value)
        if "," not in value and path.is_file():
            value = [
                line.strip()
                for line in path.read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")
            ]
        else:
            value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadInputError(f"{where}: expected a list of names, a comma-separated string or a file")
    return value


@dataclass
class Workflow:
    files: list[str]
    labels: list[int] | None  # class index per file, or None when labels come from a branch
    label_branch: str | None
    class_names: list[str]
    params: Params
    preproc: Preproc
    specs_path: Path | None = None
    preproc_source: dict[str, Any] = field(default_factory=dict)

    @property
    def tree(self) -> str:
        return self.params.branch.strip("/")

    @property
    def truth_branches(self) -> set[str]:
        """Branches the weight expression and the regression targets read: never features of the model."""
        expression = self.params.weight_expression
        return set(self.params.target) | (set(expression.names) if expression is not None else set())

    def select(self, available: list[str]) -> list[str]:
        """Feature branches from the tree's branches: selection, exclusions, identifiers and label removed."""
        p = self.params
        chosen = available
        if p.selected_branches:
            chosen = [n for n in available if any(fnmatch.fnmatchcase(n, pat) for pat in p.selected_branches)]
            missing = [
                pat for pat in p.selected_branches if not any(fnmatch.fnmatchcase(n, pat) for n in available)
            ]
            if missing:
                raise BadInputError(
                    f"selected_branches: no branch named {', '.join(map(repr, missing))} "
                    f"in tree {self.tree!r}"
                )
        excluded = set(p.identifier) | self.preproc.removed | self.truth_branches
        if self.label_branch:
            excluded.add(self.label_branch)
        chosen = [
            n
            for n in chosen
            if n not in excluded and not any(fnmatch.fnmatchcase(n, pat) for pat in p.exclude_branches)
        ]
        return chosen


def _read_json(path: str | Path, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{what} file {str(path)!r} does not exist")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadInputError(f"{what} file {str(path)!r} is not valid JSON: {err}") from None


def read_files_list(path: str | Path, redirector: str) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"files list {str(path)!r} does not exist")
    entries = [
        line.strip()
        for line in path.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not entries:
        raise BadInputError(f"files list {str(path)!r} names no file")
    return [resolve_file(entry, redirector, base=path.parent) for entry in entries]


def resolve_file(entry: str, redirector: str, base: Path | None = None) -> str:
    """A URL stays as it is; an existing local path becomes absolute; anything else gets the redirector."""
    if entry.startswith(URL_SCHEMES):
        return entry
    for candidate in (Path(entry), (base / entry) if base else None):
        if candidate is not None and candidate.is_file():
            return str(candidate.resolve())
    if redirector:
        return f"{redirector.rstrip('/')}//{entry.lstrip('/')}"
    raise BadInputError(f"input file {entry!r} does not exist locally and params.json sets no redirector")


def read_labels(spec: str, n_files: int) -> tuple[list[int] | None, str | None, list[str]]:
    """Labels: a file or comma list with one label per file, or the name of a branch holding the label."""
    path = Path(spec)
    if not path.is_file() and ("/" in spec or spec.endswith((".txt", ".json", ".csv"))):
        raise BadInputError(f"labels file {spec!r} does not exist")
    text = path.read_text() if path.is_file() else spec
    tokens = [
        t.strip()
        for line in text.splitlines()
        if not line.lstrip().startswith("#")
        for t in line.split(",")
        if t.strip()
    ]
    if len(tokens) == 1 and not _is_int(tokens[0]) and NAME.match(tokens[0]):
        return None, tokens[0], []
    if len(tokens) != n_files:
        raise BadInputError(
            f"labels: {len(tokens)} label(s) for {n_files} file(s); give one label per file, "
            "or the name of a label branch"
        )
    if all(_is_int(t) for t in tokens):
        values = sorted({int(t) for t in tokens})
        names = [str(v) for v in values]
        return [values.index(int(t)) for t in tokens], None, names
    names = sorted(set(tokens))
    return [names.index(t) for t in tokens], None, names


def _is_int(token: str) -> bool:
    return re.fullmatch(r"[+-]?\d+", token) is not None


def load_workflow(
    files: str | Path,
    labels: str | Path,
    params: str | Path | Mapping[str, Any],
    preproc: str | Path | Mapping[str, Any] | None = None,
    specs: str | Path | None = None,
) -> Workflow:
    """Read and validate a workflow. Nothing is opened over the network here."""
    params_obj = Params.from_dict(
        params if isinstance(params, Mapping) else _read_json(params, "params"),
        source="params.json" if isinstance(params, Mapping) else str(params),
    )
    preproc_data: dict[str, Any] = {}
    if preproc is not None:
        preproc_data = dict(preproc) if isinstance(preproc, Mapping) else _read_json(preproc, "preproc")
    preproc_obj = Preproc.from_dict(preproc_data)
    file_list = read_files_list(files, params_obj.redirector)
    for key in ("cross_section", "file_weight"):
        given = getattr(params_obj, key)
        if given and len(given) != len(file_list):
            raise BadInputError(
                f"params.json: {key} has {len(given)} value(s) for {len(file_list)} file(s); "
                "give one per file"
            )
    if params_obj.regression:
        # The targets say what to learn; labels (still a required argument) are not read.
        label_list, label_branch, class_names = None, None, list(params_obj.target)
    else:
        label_list, label_branch, class_names = read_labels(str(labels), len(file_list))
    if label_list is not None and len(class_names) < 2:
        raise BadInputError(
            f"labels: every file has the label {class_names[0]!r}; training needs at least two classes"
        )
    return Workflow(
        files=file_list,
        labels=label_list,
        label_branch=label_branch,
        class_names=class_names,
        params=params_obj,
        preproc=preproc_obj,
        specs_path=Path(specs) if specs else None,
        preproc_source=preproc_data,
    )
