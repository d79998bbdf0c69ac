"""The jobs table as the SQLite store had it before alembic, ``uid`` included.

An existing jobs.db already has the table (perhaps without ``uid``, added when jobs got their own
identities): it is kept, with its rows, and only what it lacks is added.

Revision ID: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table("jobs"):
        op.create_table(
            "jobs",
            sa.Column("id", sa.Text, primary_key=True),
            sa.Column("owner", sa.Text, nullable=False),
            sa.Column("name", sa.Text, nullable=False),
            sa.Column("model_name", sa.Text, nullable=False),
            sa.Column("state", sa.Text, nullable=False),
            sa.Column("resources", sa.Text, nullable=False),
            sa.Column("created", sa.Float, nullable=False),
            sa.Column("started", sa.Float),
            sa.Column("finished", sa.Float),
            sa.Column("heartbeat", sa.Float),
            sa.Column("worker", sa.Text),
            sa.Column("error", sa.Text),
            sa.Column("result", sa.Text),
            sa.Column("cancel_requested", sa.Integer, nullable=False, server_default="0"),
            sa.Column("request", sa.Text, nullable=False, server_default="{}"),
            sa.Column("uid", sa.Integer),
        )
    elif "uid" not in {column["name"] for column in inspector.get_columns("jobs")}:
        op.add_column("jobs", sa.Column("uid", sa.Integer))
    indexes = {index["name"] for index in inspector.get_indexes("jobs")}
    if "jobs_owner" not in indexes:
        op.create_index("jobs_owner", "jobs", ["owner", "created"])
    if "jobs_state" not in indexes:
        op.create_index("jobs_state", "jobs", ["state"])


def downgrade() -> None:
    op.drop_table("jobs")
