"""The job store's schema history (alembic), applied whenever a store opens.

Revision 0001 is the SQLite schema the store had before alembic (the ``uid`` column included), so an existing
``jobs.db`` is taken over with its jobs; later revisions add to it. Each upgrade runs in one transaction that
holds the store's write lock (SQLite's BEGIN IMMEDIATE, a PostgreSQL advisory lock), so the API's processes
and every worker may open the store at the same moment and only the first one migrates.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

HERE = Path(__file__).resolve().parent


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    return config


def head() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head() or ""


def current(engine: Engine) -> str | None:
    with engine.connect() as db:
        return MigrationContext.configure(db).get_current_revision()


def upgrade(engine: Engine, sqlite_path: Path | None = None, revision: str = "head") -> None:
    """Bring the store's schema to ``revision`` (the newest by default); a no-op when it is there."""
    from appliance.server.store import MIGRATION_LOCK_KEY

    wanted = head() if revision == "head" else revision
    if current(engine) == wanted:
        return
    config = alembic_config()
    with engine.begin() as db:
        if engine.dialect.name == "postgresql":
            db.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))
        config.attributes["connection"] = db
        command.upgrade(config, revision)
