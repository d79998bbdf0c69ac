"""One settings object: defaults, a config file (with the original keys), the environment, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from servicecore.errors import BadInputError
from tests.support.processes import free_port, running
from tests.tfaas.conftest import populate
from tfaas.settings import Settings


def test_defaults_bind_loopback(tmp_path: Path) -> None:
    settings = Settings.load(environ={}, model_dir=tmp_path)
    assert settings.host == "127.0.0.1" and settings.port == 8083 and settings.base == ""
    assert settings.batching.enabled and settings.max_body_bytes > 0


def test_original_config_keys(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {"port": 8081, "modelDir": str(tmp_path / "m"), "base": "/tfaas", "serverKey": "k.pem",
             "serverCrt": "c.pem", "rate": 100, "cacheLimit": 10}
        )
    )  # fmt: skip
    settings = Settings.load(config, environ={})
    assert settings.port == 8081 and settings.model_dir == tmp_path / "m" and settings.base == "/tfaas"
    assert (settings.tls_key, settings.tls_cert) == ("k.pem", "c.pem")


def test_precedence_file_then_environment_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"port": 9000, "model_dir": "/srv/models", "batching": {"max_wait_ms": 5}}))
    environ = {"TFAAS_CONFIG": str(config), "TFAAS_PORT": "9100", "TFAAS_BATCHING_MAX_ROWS": "128"}
    settings = Settings.load(environ=environ)
    assert settings.port == 9100 and settings.model_dir == Path("/srv/models")
    assert (
        settings.batching.max_wait_ms == 5 and settings.batching.max_rows == 128 and settings.batching.enabled
    )
    assert Settings.load(environ=environ, port=9200).port == 9200
    off = Settings.load(environ={**environ, "TFAAS_BATCHING": "off"})
    assert not off.batching.enabled and off.batching.max_rows == 128


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"TFAAS_PORT": "eighty"}, "port must be a number"),
        ({"TFAAS_PORT": "70000"}, "between 1 and 65535"),
        ({"TFAAS_BASE": "tfaas/"}, "base must start"),
        ({"TFAAS_WHATEVER": "1"}, "unknown TFaaS setting"),
        ({"TFAAS_BATCHING": "maybe"}, "true or false"),
        ({"TFAAS_AUTH": "{nope"}, "JSON object"),
    ],
)
def test_bad_settings_are_named(tmp_path: Path, environ: dict[str, str], message: str) -> None:
    with pytest.raises(BadInputError, match=message):
        Settings.load(environ=environ, model_dir=tmp_path)


def test_bad_config_files(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(BadInputError, match="not valid JSON"):
        Settings.load(tmp_path / "bad.json", environ={})
    (tmp_path / "unknown.json").write_text(json.dumps({"modelDir": "/m", "colour": "blue"}))
    with pytest.raises(BadInputError, match="unknown TFaaS setting 'colour'"):
        Settings.load(tmp_path / "unknown.json", environ={})
    with pytest.raises(BadInputError, match="setting model_dir is required"):
        Settings.load(environ={})


def test_cli_reports_bad_settings_with_exit_code_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tfaas", "--port", "0"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 2 and "tfaas:" in result.stderr and "Traceback" not in result.stderr


def test_server_from_an_original_config_file_with_url_prefix(
    tmp_path: Path, bundle_sources: dict[str, Path]
) -> None:
    repo = populate(tmp_path / "models", bundle_sources)
    port = free_port()
    config = tmp_path / "tfaas.json"
    config.write_text(json.dumps({"port": port, "modelDir": str(repo), "base": "/tfaas", "workers": 1}))
    argv = [sys.executable, "-m", "tfaas", "--config", str(config)]
    root = Path(__file__).resolve().parents[2]
    with running(argv, port, tmp_path / "log", env={"TF_CPP_MIN_LOG_LEVEL": "2"}, cwd=root):
        url = f"http://127.0.0.1:{port}"
        answer = requests.post(
            f"{url}/tfaas/json", json={"model": "small", "values": [1, 2, 3, 4]}, timeout=120
        )
        assert answer.status_code == 200 and len(answer.json()) == 2
        assert requests.get(f"{url}/json", timeout=10).status_code == 404
        assert requests.get(f"{url}/tfaas/v2/health/live", timeout=10).json() == {"live": True}
        assert requests.get(f"{url}/tfaas/openapi.json", timeout=10).json()["servers"] == [{"url": "/tfaas"}]
