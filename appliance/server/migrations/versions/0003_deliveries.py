"""Models across machines: the versions the store hands out, and the outbox of deliveries to TFaaS replicas.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_versions",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("high", sa.Integer, nullable=False),
    )
    op.create_table(
        "deliveries",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("replica", sa.Text, nullable=False),
        sa.Column("job_id", sa.Text, nullable=False),
        sa.Column("archive", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_try", sa.Float, nullable=False),
        sa.Column("lease_until", sa.Float),
        sa.Column("error", sa.Text),
        sa.Column("delivered", sa.Float),
        sa.UniqueConstraint("model", "version", "replica", name="deliveries_once"),
    )
    op.create_index("deliveries_due", "deliveries", ["state", "next_try"])


def downgrade() -> None:
    op.drop_table("deliveries")
    op.drop_table("model_versions")
