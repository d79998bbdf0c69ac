"""The tasks of a multi-worker job: which worker took each, and the address its peers reach it at.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_tasks",
        sa.Column("job_id", sa.Text, primary_key=True),
        sa.Column("task", sa.Integer, primary_key=True),
        sa.Column("worker", sa.Text, nullable=False),
        sa.Column("address", sa.Text),
        sa.Column("joined", sa.Float, nullable=False),
        sa.Column("finished", sa.Float),
    )


def downgrade() -> None:
    op.drop_table("job_tasks")
