"""servicecore.settings: one loader and one coercion for both services' settings objects."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest

from servicecore import settings
from servicecore.auth import AuthSettings
from servicecore.errors import BadInputError


@dataclass(frozen=True)
class Inner:
    SHORTHAND_FIELD: ClassVar[str] = "on"

    on: bool = True
    size: int = 4


@dataclass(frozen=True)
class Example:
    root: Path
    name: str = "x"
    count: int = 1
    ratio: float = 0.5
    flag: bool = False
    cache: Path | None = None
    label: str | None = None
    tags: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)
    inner: Inner = field(default_factory=Inner)
    auth: Mapping[str, Any] = field(default_factory=dict, metadata={settings.SCHEMA: AuthSettings})


def load(config: Path | None = None, environ: dict[str, str] | None = None, **flags: Any) -> Example:
    return settings.load(
        Example, env_prefix="EX_", label="example", config_file=config, environ=environ or {}, flags=flags
    )


def test_environment_text_becomes_every_declared_type() -> None:
    environ = {"EX_ROOT": "/srv", "EX_COUNT": "12", "EX_RATIO": "0.25", "EX_FLAG": "yes", "EX_CACHE": "/c"}
    environ |= {"EX_LABEL": "", "EX_TAGS": "a, b", "EX_ENV": '{"A": "1"}', "EX_EXTRA": "{k: [1, 2]}"}
    environ |= {"EX_INNER_SIZE": "9", "EX_AUTH": '{"mode": "local-demo", "allowed_groups": "cms, atlas"}'}
    loaded = load(environ=environ)
    assert loaded.root == Path("/srv") and loaded.count == 12 and loaded.ratio == 0.25 and loaded.flag
    assert loaded.cache == Path("/c") and loaded.label == "" and loaded.tags == ("a", "b")
    assert loaded.env == {"A": "1"} and loaded.extra == {"k": [1, 2]} and loaded.inner == Inner(True, 9)
    assert loaded.auth == {"mode": "local-demo", "allowed_groups": ("cms", "atlas")}
    assert load(environ={"EX_ROOT": "/r", "EX_TAGS": '["x"]', "EX_CACHE": ""}).tags == ("x",)
    assert load(environ={"EX_ROOT": "/r", "EX_CACHE": ""}).cache is None


def test_layers_in_order_and_nested_fields_merged_key_by_key(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("root: /a\ncount: 2\nname: file\ninner: {size: 7}\n")
    environ = {"EX_COUNT": "3", "EX_INNER": "off"}
    loaded = load(config, environ, name="flag", count=None)
    assert (loaded.root, loaded.count, loaded.name) == (Path("/a"), 3, "flag")
    assert loaded.inner == Inner(on=False, size=7)
    json_config = tmp_path / "c.json"
    json_config.write_text(json.dumps({"root": "/b", "inner": False}))
    assert load(environ={"EX_CONFIG": str(json_config)}).inner == Inner(on=False, size=4)


ENV_SOURCE = r"\(environment variable EX_"
MISTAKES = [
    (
        {"EX_COUNT": "many"},
        r"setting count must be a number \(an integer\), got 'many' " + ENV_SOURCE + "COUNT",
    ),
    ({"EX_COUNT": "1.5"}, "setting count must be a number"),
    ({"EX_RATIO": "half"}, "setting ratio must be a number, got 'half'"),
    ({"EX_FLAG": "maybe"}, "setting flag must be true or false"),
    ({"EX_ENV": "[1]"}, "setting env must be a JSON object"),
    ({"EX_ENV": '{"A": 1}'}, r"setting env\.A must be a string"),
    ({"EX_EXTRA": "{nope"}, "setting extra must be a JSON object"),
    ({"EX_INNER_SIZE": "big"}, r"setting inner\.size must be a number .*" + ENV_SOURCE + "INNER_SIZE"),
    ({"EX_INNER": "perhaps"}, r"setting inner\.on must be true or false"),
    ({"EX_INNER_COLOUR": "1"}, r"in the environment: EX_INNER_COLOUR \(known: .*EX_ROOT"),
    ({"EX_COLOUR": "1"}, "unknown example setting in the environment: EX_COLOUR"),
    ({"EX_AUTH": '{"mdoe": "x"}'}, r"unknown example setting 'auth\.mdoe' in environment variable EX_AUTH"),
    ({"EX_AUTH": '{"mdoe": "x"}'}, r"\(known: algorithms, allow_any_user, allowed_groups, .*\)"),
    ({"EX_AUTH": '{"issuers": 3}'}, r"setting auth\.issuers must be a list of strings, got 3 " + ENV_SOURCE),
]


@pytest.mark.parametrize(("environ", "message"), MISTAKES)
def test_errors_name_the_setting_and_its_source(environ: dict[str, str], message: str) -> None:
    with pytest.raises(BadInputError, match=message):
        load(environ={"EX_ROOT": "/r", **environ})


def test_errors_in_files_and_flags_name_them(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("root: /a\ncolour: blue\n")
    with pytest.raises(
        BadInputError, match=r"unknown example setting 'colour' in config '.*c\.yaml' \(known: auth, cache"
    ):
        load(config)
    config.write_text("root: /a\ncount: true\n")
    with pytest.raises(
        BadInputError, match=r"setting count must be a number .*got True \(config '.*c\.yaml'\)"
    ):
        load(config)
    config.write_text("root: [\n")
    with pytest.raises(BadInputError, match="is not valid YAML"):
        load(config)
    config.write_text("- a list\n")
    with pytest.raises(BadInputError, match="must hold a mapping"):
        load(config)
    with pytest.raises(BadInputError, match="cannot read config"):
        load(tmp_path / "missing.yaml")
    with pytest.raises(
        BadInputError, match=r"setting name must be a string, got 3 \(command-line option name\)"
    ):
        load(root="/a", name=3)
    with pytest.raises(
        BadInputError, match=r"setting root is required \(--root, EX_ROOT or root in the config file\)"
    ):
        load()


def test_file_aliases_and_ignored_keys(tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"rootDir": "/a", "legacy": 1}))
    aliases = {"file_aliases": {"rootDir": "root"}, "ignored_file_keys": {"legacy"}}
    loaded = settings.load(
        Example, env_prefix="EX_", label="example", config_file=config, environ={}, **aliases
    )
    assert loaded.root == Path("/a")


def test_describe_is_json_friendly() -> None:
    described = settings.describe(load(root="/a", tags=["t"]))
    assert json.loads(json.dumps(described))["root"] == "/a" and described["inner"] == {"on": True, "size": 4}


def test_both_services_say_the_same_for_the_same_mistake(tmp_path: Path) -> None:
    """The two services once coerced differently; now one function answers for both."""
    from appliance.server.settings import Settings as ServerSettings
    from tfaas.settings import Settings as TfaasSettings

    def message(cls: type, prefix: str, **environ: str) -> str:
        base = {"MLAAS4HEP_DATA_DIR": str(tmp_path), "TFAAS_MODEL_DIR": str(tmp_path)}
        given = {**base, **{f"{prefix}{k}": v for k, v in environ.items()}}
        environ = {k: v for k, v in given.items() if k.startswith(prefix)}
        with pytest.raises(BadInputError) as caught:
            cls.load(environ=environ)
        return str(caught.value).replace(prefix, "<PREFIX>")

    open_to_all = '{"mode": "oidc", "issuers": ["https://i/"], "audiences": ["a"]}'
    mistakes = [{"PORT": "eighty"}, {"WORKERS": "1.5"}, {"AUTH": "[1]"}, {"AUTH": '{"mode": "ldap"}'}]
    for mistake in [*mistakes, {"AUTH": open_to_all}, {"AUTH": '{"mode": "local-demo"}', "HOST": "0.0.0.0"}]:
        server, tfaas = (
            message(ServerSettings, "MLAAS4HEP_", **mistake),
            message(TfaasSettings, "TFAAS_", **mistake),
        )
        assert server.replace("MLaaS4HEP server", "TFaaS") == tfaas, mistake


# Where the project reads environment variables under a service's prefix: the scripts and the Molecule
# scenarios (${NAME:-default}, unless the script assigns NAME itself), the client (f"{ENV_PREFIX}NAME") and
# Python tools (environ.get("NAME")).
ENVIRONMENT_READERS = {
    r"\$\{((?:MLAAS4HEP|TFAAS)_[A-Z0-9_]+):?-": ("scripts", "molecule", "bench", "playbooks", ".ci"),
    r"\{ENV_PREFIX\}([A-Z0-9_]+)": ("mlaas4hep_client",),
    r"environ(?:\.get\(|\[)\s*[\"']((?:MLAAS4HEP|TFAAS)_[A-Z0-9_]+)": (
        "bench",
        "mlaas4hep_devtools",
        "scripts",
    ),
}


def project_environment_names() -> set[str]:
    import re

    top = Path(__file__).resolve().parents[2]
    names: set[str] = set()
    for pattern, folders in ENVIRONMENT_READERS.items():
        for folder in folders:
            for path in (top / folder).rglob("*"):
                if path.is_file() and path.suffix in {"", ".sh", ".py", ".yml", ".yaml"}:
                    text = path.read_text(errors="replace")
                    found = [n for n in re.findall(pattern, text) if not re.search(rf"^\s*{n}=", text, re.M)]
                    names |= {
                        n if n.startswith(("MLAAS4HEP_", "TFAAS_")) else f"MLAAS4HEP_{n}" for n in found
                    }
    return names


def test_every_variable_the_project_reads_under_a_prefix_is_a_setting_or_declared_not_one(tmp_path):
    from appliance.server.settings import Settings as ServerSettings
    from tfaas.settings import Settings as TFaaSSettings

    names = project_environment_names()
    assert {"MLAAS4HEP_VENV", "MLAAS4HEP_SERVER", "MLAAS4HEP_NSPAWN_STATE"} <= names  # the scan finds them
    required = {
        "MLAAS4HEP_": {"MLAAS4HEP_DATA_DIR": str(tmp_path)},
        "TFAAS_": {"TFAAS_MODEL_DIR": str(tmp_path)},
    }
    for cls in (ServerSettings, TFaaSSettings):
        for name in sorted(
            n for n in names if n.startswith(cls.ENV_PREFIX) and n != f"{cls.ENV_PREFIX}CONFIG"
        ):
            try:
                cls.load(environ={**required[cls.ENV_PREFIX], name: "1"})
            except BadInputError as error:
                # A value of the wrong type is fine here: the name is known. An unknown name is the failure.
                assert "unknown" not in str(error), (
                    f"{name}: add it to {cls.__name__}.ENV_NOT_SETTINGS or rename"
                )


def test_the_scripts_and_clients_variables_are_skipped_and_typos_still_refused(tmp_path):
    from appliance.server.settings import Settings as ServerSettings

    base = {"MLAAS4HEP_DATA_DIR": str(tmp_path)}
    loaded = ServerSettings.load(
        environ={
            **base,
            "MLAAS4HEP_VENV": "/opt/venv",
            "MLAAS4HEP_SERVER": "https://x:4433",
            "MLAAS4HEP_PORT": "81",
        }
    )
    assert loaded.port == 81
    with pytest.raises(
        BadInputError, match="unknown MLaaS4HEP server setting in the environment: MLAAS4HEP_PORTT"
    ):
        ServerSettings.load(environ={**base, "MLAAS4HEP_PORTT": "81"})
