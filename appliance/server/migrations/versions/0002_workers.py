"""Worker heartbeats (for /health and /metrics), and one running job per uid enforced by the database.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

RUNNING = sa.text("state = 'running'")


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("started", sa.Float, nullable=False),
        sa.Column("heartbeat", sa.Float, nullable=False),
        sa.Column("version", sa.Text, nullable=False, server_default=""),
        sa.Column("running", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_index(
        "jobs_running_uid", "jobs", ["uid"], unique=True, sqlite_where=RUNNING, postgresql_where=RUNNING
    )


def downgrade() -> None:
    op.drop_index("jobs_running_uid", "jobs")
    op.drop_table("workers")
