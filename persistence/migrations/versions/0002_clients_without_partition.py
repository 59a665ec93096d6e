"""The clients projection loses partition_index: the coordinator no longer hands out simulated shares.

A client's data is its own setting (its folder, or a simulated share it picks with `--share I/N`); the
events, the proto and the database keep nothing of it.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("clients") as batch:  # batch: SQLite rebuilds the table
        batch.drop_column("partition_index")


def downgrade() -> None:
    with op.batch_alter_table("clients") as batch:
        batch.add_column(sa.Column("partition_index", sa.Integer(), nullable=False, server_default="-1"))
