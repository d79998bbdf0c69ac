"""One way for every service to read its settings object, and one coercion driven by the field types.

Precedence, lowest first: the dataclass defaults, a config file (YAML, or JSON when it ends in ``.json``;
``config_file`` or ``$<PREFIX>CONFIG``), ``<PREFIX><NAME>`` environment variables, then command-line flags
(``None`` means not given). A nested dataclass field (TFaaS's ``batching``) is merged key by key across the
layers and reached from the environment as ``<PREFIX><FIELD>_<NAME>``; a mapping field (``auth``,
``job_env``) is replaced whole, and from the environment it is a JSON or YAML object.

Every refusal is a ``BadInputError`` that names the setting and where its value came from (the file, the
environment variable, the flag); an unknown key is refused with the list of known ones. A service's
settings class declares only its fields and, in ``__post_init__``, its cross-field checks.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

import yaml

from servicecore.errors import BadInputError

T = TypeVar("T")
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
# Field metadata key: a mapping field whose keys and values follow this dataclass's fields (checked and
# coerced where the value is read, so errors name their source) but which stays a plain mapping.
SCHEMA = "schema"
# Class attribute of a nested dataclass: the field a bare scalar sets (``batching: false``).
SHORTHAND = "SHORTHAND_FIELD"


def load(
    cls: type[T],
    *,
    env_prefix: str,
    label: str,
    config_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    file_aliases: Mapping[str, str] | None = None,
    ignored_file_keys: Collection[str] = (),
    env_not_settings: Collection[str] = (),
) -> T:
    """``cls`` from its defaults, the config file, the environment and the flags, in that order.

    ``label`` names the service in messages ("unknown TFaaS setting ..."); ``file_aliases`` maps other
    names a config file may use onto fields, and ``ignored_file_keys`` are accepted there and dropped.
    ``env_not_settings`` are environment variables under the prefix that belong to other programs (the
    project's scripts): skipped, where any other unknown name under the prefix is refused as a likely typo.
    """
    environ = os.environ if environ is None else environ
    config_file = config_file or environ.get(f"{env_prefix}CONFIG")
    layers: list[dict[str, Any]] = []
    if config_file:
        data = read_config_file(config_file)
        source = f"config {str(config_file)!r}"
        aliases = file_aliases or {}
        renamed = {aliases.get(k, k): v for k, v in data.items() if k not in ignored_file_keys}
        layers.append(coerce_fields(cls, renamed, lambda _: source, label))
    foreign = frozenset(env_not_settings)
    layers.append(
        _from_environment(cls, {k: v for k, v in environ.items() if k not in foreign}, env_prefix, label)
    )
    given = {name: value for name, value in (flags or {}).items() if value is not None}
    layers.append(coerce_fields(cls, given, lambda name: f"command-line option {name}", label))
    values: dict[str, Any] = {}
    for layer in layers:
        values = _merge(cls, values, layer)
    return build(cls, values, env_prefix=env_prefix)


class LoadableSettings:
    """Base of a service's settings dataclass: ``load`` and ``describe``, configured by class attributes."""

    ENV_PREFIX: ClassVar[str]  # "TFAAS_": TFAAS_PORT, TFAAS_CONFIG
    LABEL: ClassVar[str]  # the service in messages: "unknown TFaaS setting ..."
    FILE_ALIASES: ClassVar[Mapping[str, str]] = {}  # other names a config file may use for fields
    IGNORED_FILE_KEYS: ClassVar[Collection[str]] = ()  # accepted in a config file, and dropped
    # Environment variables under ENV_PREFIX that are not settings: the scripts' own (MLAAS4HEP_VENV, ...),
    # skipped rather than refused as typos (tests/core/test_settings_loader.py keeps the list complete).
    ENV_NOT_SETTINGS: ClassVar[Collection[str]] = ()

    @classmethod
    def load(
        cls,
        config_file: str | Path | None = None,
        environ: Mapping[str, str] | None = None,
        **flags: Any,
    ) -> Self:
        """Defaults, the config file (``config_file`` or ``$<PREFIX>CONFIG``), the environment (default
        ``os.environ``), then ``flags`` (command-line options; ``None`` means not given)."""
        return load(
            cls,
            env_prefix=cls.ENV_PREFIX,
            label=cls.LABEL,
            config_file=config_file,
            environ=environ,
            flags=flags,
            file_aliases=cls.FILE_ALIASES,
            ignored_file_keys=cls.IGNORED_FILE_KEYS,
            env_not_settings=cls.ENV_NOT_SETTINGS,
        )

    def describe(self) -> dict[str, Any]:
        """The settings as JSON-friendly values."""
        return describe(self)


def build(cls: type[T], values: Mapping[str, Any], env_prefix: str = "") -> T:
    """``cls`` from already coerced ``values``; nested dataclasses from their partial mappings."""
    hints = _hints(cls)
    missing = [f.name for f in _required_fields(cls) if f.name not in values]
    if missing:
        name = missing[0]
        where = f"--{name.replace('_', '-')}, {env_prefix}{name.upper()} or " if env_prefix else ""
        raise BadInputError(f"setting {name} is required ({where}{name} in the config file)")
    finished = {
        name: build(hints[name], value)
        if _is_dataclass_type(hints[name]) and isinstance(value, dict)
        else value
        for name, value in values.items()
    }
    return cls(**finished)


def coerce_fields(
    cls: type, data: Mapping[str, Any], source: Callable[[str], str], label: str, prefix: str = ""
) -> dict[str, Any]:
    """``data`` checked against ``cls``'s fields and coerced to their types; nested dataclasses stay mappings.

    ``source(name)`` says where the value of ``name`` came from; ``prefix`` names an enclosing field.
    """
    if not isinstance(data, Mapping):
        raise BadInputError(f"{label} settings must be a mapping of names to values, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = _hints(cls)
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise BadInputError(
                f"unknown {label} setting {f'{prefix}{key}'!r} in {source(key)} "
                f"(known: {', '.join(sorted(fields))})"
            )
        schema = fields[key].metadata.get(SCHEMA)
        where = _Where(f"{prefix}{key}", source(key), label)
        values[key] = coerce(value, hints[key], where)
        if schema is not None:
            values[key] = coerce_fields(
                schema, values[key], lambda _, w=where: w.source, label, f"{prefix}{key}."
            )
    return values


@dataclasses.dataclass(frozen=True)
class _Where:
    """A value's setting name and source, for error messages."""

    name: str
    source: str
    label: str

    def refuse(self, expected: str, value: Any) -> BadInputError:
        return BadInputError(f"setting {self.name} must be {expected}, got {value!r} ({self.source})")


def coerce(value: Any, declared: Any, where: _Where) -> Any:
    """``value`` as the ``declared`` type; text (from the environment) is parsed, wrong types are refused."""
    origin, arguments = typing.get_origin(declared), typing.get_args(declared)
    if origin in (typing.Union, types.UnionType):
        options = [option for option in arguments if option is not type(None)]
        if value is None or (value == "" and options != [str]):
            return None
        return coerce(value, options[0], where)
    if declared is Any:
        return value
    if _is_dataclass_type(declared):
        return _nested(value, declared, where)
    if origin in (tuple, list, Collection) or declared in (tuple, list):
        return _sequence(value, arguments[0] if arguments else Any, where, list if origin is list else tuple)
    if origin in (Mapping, dict) or declared in (dict, Mapping):
        return _mapping(value, arguments[1] if len(arguments) == 2 else Any, where)
    if declared is bool:
        return _bool(value, where)
    if declared is int or declared is float:
        return _number(value, declared, where)
    if declared is str:
        if not isinstance(value, str):
            raise where.refuse("a string", value)
        return value
    if declared is Path:
        if not isinstance(value, str | os.PathLike):
            raise where.refuse("a path", value)
        return Path(value)
    raise TypeError(f"no coercion for setting {where.name} of type {declared!r}")


def _bool(value: Any, where: _Where) -> bool:
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS + FALSE_WORDS:
        return value.strip().lower() in TRUE_WORDS
    if not isinstance(value, bool):
        raise where.refuse("true or false", value)
    return value


def _number(value: Any, declared: type, where: _Where) -> int | float:
    expected = "a number (an integer)" if declared is int else "a number"
    number = value
    if isinstance(value, str):
        try:
            number = float(value) if declared is float else _parse_int(value)
        except ValueError:
            raise where.refuse(expected, value) from None
    if isinstance(number, bool) or not isinstance(number, int | float):
        raise where.refuse(expected, value)
    if declared is int:
        if not float(number).is_integer():
            raise where.refuse(expected, value)
        return int(number)
    return float(number)


def _parse_int(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)  # "1e3"; the caller refuses a fraction


def _structured(value: Any, where: _Where, kind: str) -> Any:
    """A JSON or YAML document given as text (an environment variable); other values as they are."""
    if not isinstance(value, str):
        return value
    if not value.strip():
        return {} if kind == "object" else []
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError as err:
        raise BadInputError(
            f"setting {where.name} must be a JSON {kind} ({where.source}): {err}".replace("\n", " ")
        ) from None


def _sequence(value: Any, item: Any, where: _Where, kind: type) -> Any:
    if isinstance(value, str) and not value.lstrip().startswith("["):
        value = [part.strip() for part in value.split(",") if part.strip()]  # "a, b" from the environment
    value = _structured(value, where, "list")
    if not isinstance(value, list | tuple):
        raise where.refuse("a list of strings" if item is str else "a list", value)
    items = [
        coerce(v, item, dataclasses.replace(where, name=f"{where.name}[{i}]")) for i, v in enumerate(value)
    ]
    return kind(items)


def _mapping(value: Any, item: Any, where: _Where) -> dict[str, Any]:
    value = _structured(value, where, "object")
    if not isinstance(value, Mapping):
        raise where.refuse("a JSON object", value)
    return {
        str(k): coerce(v, item, dataclasses.replace(where, name=f"{where.name}.{k}"))
        for k, v in value.items()
    }


def _nested(value: Any, declared: type, where: _Where) -> dict[str, Any]:
    shorthand = getattr(declared, SHORTHAND, None)
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if shorthand is not None and isinstance(value, bool | str):
        value = {shorthand: value}
    if not isinstance(value, Mapping):
        expected = f"true, false or an object of {shorthand} and more" if shorthand else "an object"
        raise where.refuse(expected, value)
    return coerce_fields(declared, value, lambda _: where.source, where.label, prefix=f"{where.name}.")


def _from_environment(cls: type, environ: Mapping[str, str], prefix: str, label: str) -> dict[str, Any]:
    """``<PREFIX><NAME>`` for a field, ``<PREFIX><FIELD>_<NAME>`` for a field of a nested dataclass."""
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    nested = {name: hints[name] for name in names if _is_dataclass_type(hints[name])}
    values: dict[str, Any] = {}
    for key, text in environ.items():
        if not key.startswith(prefix) or key == f"{prefix}CONFIG":
            continue
        name = key[len(prefix) :].lower()
        source = f"environment variable {key}"
        if name in names:
            values = _merge(cls, values, coerce_fields(cls, {name: text}, lambda _, s=source: s, label))
            continue
        outer = next((n for n in nested if name.startswith(f"{n}_")), None)
        inner = name[len(outer) + 1 :] if outer else ""
        if outer is None or inner not in {f.name for f in dataclasses.fields(nested[outer])}:
            known = ", ".join(f"{prefix}{n.upper()}" for n in sorted(names))
            raise BadInputError(f"unknown {label} setting in the environment: {key} (known: {known})")
        values = _merge(cls, values, coerce_fields(cls, {outer: {inner: text}}, lambda _, s=source: s, label))
    return values


def _merge(cls: type, lower: dict[str, Any], higher: dict[str, Any]) -> dict[str, Any]:
    """``higher`` over ``lower``; a nested dataclass's fields one by one, anything else whole."""
    hints = _hints(cls)
    merged = {**lower, **higher}
    for name, value in higher.items():
        if _is_dataclass_type(hints[name]) and isinstance(lower.get(name), dict):
            merged[name] = {**lower[name], **value}
    return merged


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A config file's mapping: JSON when the name ends in ``.json``, YAML (a superset of JSON) otherwise."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise BadInputError(f"cannot read config {str(path)!r}: {err.strerror}") from None
    kind = "JSON" if path.suffix == ".json" else "YAML"
    try:
        data = json.loads(text) if kind == "JSON" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise BadInputError(f"config {str(path)!r} is not valid {kind}: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BadInputError(f"config {str(path)!r} must hold a mapping of settings")
    return data


def describe(settings: Any) -> dict[str, Any]:
    """A settings object as JSON-friendly values (paths as text)."""

    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, Mapping):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(settings))


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(declared: Any) -> bool:
    return isinstance(declared, type) and dataclasses.is_dataclass(declared)


def _required_fields(cls: type) -> list[dataclasses.Field]:
    return [
        f
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]


__all__ = [
    "SCHEMA",
    "SHORTHAND",
    "LoadableSettings",
    "build",
    "coerce",
    "coerce_fields",
    "describe",
    "load",
    "read_config_file",
]
