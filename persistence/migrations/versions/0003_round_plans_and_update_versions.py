"""rounds.plans and updates.model_version: the API shows each client's plan and where a FedBuff update went.

RoundStarted.plans (capability-aware plans) says what each selected client trains instead of the round's
plan, and why; UpdateAccepted.model_version says which model an update was trained on, which under FedBuff
may be older than its round's. A late update is carried into the next buffer, so the API matches its id
against the rounds' update_ids and needs the version to say how stale it was.

Both columns are nullable: rows projected before this revision were written without them, and NULL says
"not recorded" (the projection is not rebuilt from the log).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

JSON = sa.JSON()  # a frozen copy of schema.py's Json: plain JSON on PostgreSQL too


def upgrade() -> None:
    with op.batch_alter_table("rounds") as batch:  # batch: SQLite adds in place, and rebuilds the table to drop
        batch.add_column(sa.Column("plans", JSON, nullable=True))
    with op.batch_alter_table("updates") as batch:
        batch.add_column(sa.Column("model_version", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("updates") as batch:
        batch.drop_column("model_version")
    with op.batch_alter_table("rounds") as batch:
        batch.drop_column("plans")
