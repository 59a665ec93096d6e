"""Initial schema: event log, inbox, blobs and projections (persistence/schema.py at revision 0001).

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

# Frozen copies of schema.py's types: a revision must not change when schema.py does.
JSON = sa.JSON()  # plain JSON on PostgreSQL too: JSONB would rewrite numbers
POSITION = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UNPUBLISHED = sa.text("published_at IS NULL")


def upgrade() -> None:
    op.create_table(
        "blobs",
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("digest", name=op.f("pk_blobs")),
    )
    op.create_table(
        "clients",
        sa.Column("client_id", sa.String(length=200), nullable=False),
        sa.Column("partition_index", sa.Integer(), nullable=False),
        sa.Column("capabilities", JSON, nullable=False),
        sa.Column("registered_at", sa.Double(), nullable=False),
        sa.Column("last_seen", sa.Double(), nullable=False),
        sa.Column("rounds_joined", sa.Integer(), nullable=False),
        sa.Column("epsilon", sa.Double(), nullable=True),
        sa.Column("evicted", sa.Boolean(), nullable=False),
        sa.Column("evicted_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("client_id", name=op.f("pk_clients")),
    )
    op.create_table(
        "declines",
        sa.Column("id", POSITION, autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=200), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("client_id", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_declines")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_declines_run_id_round"), "declines", ["run_id", "round"], unique=False)
    op.create_table(
        "events",
        sa.Column("position", POSITION, autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("stream_id", sa.String(length=200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("run_id", sa.String(length=200), nullable=True),
        sa.Column("round", sa.Integer(), nullable=True),
        sa.Column("payload", JSON, nullable=False),
        sa.Column("schema_version", sa.Integer(), nullable=False),
        sa.Column("occurred_at", sa.Double(), nullable=False),
        sa.Column("traceparent", sa.String(length=64), nullable=True),
        sa.Column("published_at", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("position", name=op.f("pk_events")),
        sa.UniqueConstraint("event_id", name=op.f("uq_events_event_id")),
        sa.UniqueConstraint("stream_id", "version", name=op.f("uq_events_stream_id_version")),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ix_events_unpublished",
        "events",
        ["position"],
        unique=False,
        postgresql_where=UNPUBLISHED,
        sqlite_where=UNPUBLISHED,
    )
    op.create_table(
        "inbox",
        sa.Column("consumer", sa.String(length=100), nullable=False),
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("processed_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("consumer", "message_id", name=op.f("pk_inbox")),
    )
    op.create_table(
        "privacy",
        sa.Column("run_id", sa.String(length=200), nullable=False),
        sa.Column("client_id", sa.String(length=200), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("epsilon", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "client_id", "round", name=op.f("pk_privacy")),
    )
    op.create_table(
        "rejections",
        sa.Column("id", POSITION, autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=200), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("client_id", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rejections")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_rejections_run_id_round"), "rejections", ["run_id", "round"], unique=False)
    op.create_table(
        "rounds",
        sa.Column("run_id", sa.String(length=200), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=False),
        sa.Column("model_digest", sa.String(length=64), nullable=False),
        sa.Column("selected", JSON, nullable=False),
        sa.Column("deadline", sa.Double(), nullable=False),
        sa.Column("started_at", sa.Double(), nullable=False),
        sa.Column("quorum_at", sa.Double(), nullable=True),
        sa.Column("aggregated_at", sa.Double(), nullable=True),
        sa.Column("update_ids", JSON, nullable=True),
        sa.Column("partial", sa.Boolean(), nullable=True),
        sa.Column("new_model_version", sa.Integer(), nullable=True),
        sa.Column("new_model_digest", sa.String(length=64), nullable=True),
        sa.Column("metrics", JSON, nullable=True),
        sa.Column("duration_s", sa.Double(), nullable=True),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("run_id", "round", name=op.f("pk_rounds")),
    )
    op.create_table(
        "runs",
        sa.Column("run_id", sa.String(length=200), nullable=False),
        sa.Column("config", JSON, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("rounds_completed", sa.Integer(), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=True),
        sa.Column("model_digest", sa.String(length=64), nullable=True),
        sa.Column("metrics", JSON, nullable=True),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", name=op.f("pk_runs")),
    )
    op.create_table(
        "updates",
        sa.Column("update_id", sa.String(length=200), nullable=False),
        sa.Column("run_id", sa.String(length=200), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("client_id", sa.String(length=200), nullable=False),
        sa.Column("num_samples", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("wire_bytes", sa.BigInteger(), nullable=False),
        sa.Column("raw_bytes", sa.BigInteger(), nullable=False),
        sa.Column("ratio", sa.Double(), nullable=False),
        sa.Column("epsilon", sa.Double(), nullable=True),
        sa.Column("metrics", JSON, nullable=False),
        sa.Column("late", sa.Boolean(), nullable=False),
        sa.Column("accepted_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("update_id", name=op.f("pk_updates")),
        sa.UniqueConstraint("run_id", "round", "client_id", name=op.f("uq_updates_run_id_round_client_id")),
    )


def downgrade() -> None:
    op.drop_table("updates")
    op.drop_table("runs")
    op.drop_table("rounds")
    op.drop_index(op.f("ix_rejections_run_id_round"), table_name="rejections")
    op.drop_table("rejections")
    op.drop_table("privacy")
    op.drop_table("inbox")
    op.drop_index("ix_events_unpublished", table_name="events", postgresql_where=UNPUBLISHED, sqlite_where=UNPUBLISHED)
    op.drop_table("events")
    op.drop_index(op.f("ix_declines_run_id_round"), table_name="declines")
    op.drop_table("declines")
    op.drop_table("clients")
    op.drop_table("blobs")
