"""The server's one settings object: sources, precedence, validation, documentation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from appliance.server.queue import make_huey
from appliance.server.settings import Settings
from servicecore.errors import BadInputError

DOCS = Path(__file__).resolve().parents[2] / "docs" / "server.md"


def test_file_environment_and_flags_in_order(tmp_path):
    config = tmp_path / "server.yaml"
    # Bound beyond loopback (the flag below), the API must verify tokens: a demo mode would be refused.
    auth = (
        "auth: {mode: oidc, issuers: ['https://iam.example/'], audiences: [mlaas4hep], allowed_groups: [cms]}"
    )
    config.write_text(f"data_dir: /srv/a\nport: 9000\nmax_concurrent_jobs: 3\n{auth}\n")
    env = {"MLAAS4HEP_PORT": "9100", "MLAAS4HEP_GPU_JOBS": "true", "MLAAS4HEP_JOB_ENV": '{"A": "1"}'}
    settings = Settings.load(config, environ=env, host="0.0.0.0", port=None)
    assert settings.data_dir == Path("/srv/a") and settings.port == 9100 and settings.host == "0.0.0.0"
    assert settings.max_concurrent_jobs == 3 and settings.gpu_jobs is True and settings.job_env == {"A": "1"}
    assert settings.auth_settings.mode == "oidc" and settings.auth_settings.allowed_groups == ("cms",)
    assert settings.model_repository == Path("/srv/a/models")
    assert settings.job_db == Path("/srv/a/jobs.db")
    json_config = tmp_path / "server.json"
    json_config.write_text(json.dumps({"data_dir": "/srv/b", "models_dir": "/srv/models"}))
    from_env = Settings.load(environ={"MLAAS4HEP_CONFIG": str(json_config)})
    assert from_env.model_repository == Path("/srv/models")


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({}, "data_dir is required"),
        ({"MLAAS4HEP_DATA_DIR": "/x", "MLAAS4HEP_PORTT": "1"}, "MLAAS4HEP_PORTT"),
        ({"MLAAS4HEP_DATA_DIR": "/x", "MLAAS4HEP_PORT": "eighty"}, "port"),
        ({"MLAAS4HEP_DATA_DIR": "/x", "MLAAS4HEP_GPU_JOBS": "maybe"}, "gpu_jobs"),
        ({"MLAAS4HEP_DATA_DIR": "/x", "MLAAS4HEP_QUEUE_URL": "amqp://q"}, "queue_url"),
        ({"MLAAS4HEP_DATA_DIR": "/x", "MLAAS4HEP_MAX_CPUS": "0"}, "max_cpus"),
    ],
)
def test_bad_settings_are_refused_by_name(environ, message):
    with pytest.raises(BadInputError, match=message):
        Settings.load(environ=environ)


def test_bad_config_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("port: [1\n")
    with pytest.raises(BadInputError, match="not valid"):
        Settings.load(bad, environ={})
    with pytest.raises(BadInputError, match="cannot read"):
        Settings.load(tmp_path / "missing.yaml", environ={})


def test_one_setting_switches_the_queue_to_redis(tmp_path):
    from huey import RedisHuey, SqliteHuey

    assert isinstance(make_huey(Settings(data_dir=tmp_path)), SqliteHuey)
    pytest.importorskip("redis")
    assert isinstance(make_huey(Settings(data_dir=tmp_path, queue_url="redis://127.0.0.1:6379/0")), RedisHuey)


def test_every_setting_is_documented():
    docs = DOCS.read_text()
    for field in dataclasses.fields(Settings):
        assert field.metadata.get("help"), field.name
        assert f"| `{field.name}` |" in docs, f"{field.name} missing from docs/server.md"
