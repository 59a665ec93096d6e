"""The database schema (DESIGN.md §6): event log, inbox, blobs and the read-side projections.

One MetaData for SQLite and PostgreSQL; the Alembic revisions create exactly these tables.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Double,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

# Stable constraint names so that migrations and error translation can refer to them.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite only autoincrements an INTEGER PRIMARY KEY; PostgreSQL gets a BIGSERIAL.
Position = BigInteger().with_variant(Integer(), "sqlite")
# Plain JSON on PostgreSQL too: JSONB rewrites numbers (1.25e17 comes back as an int), the log must not.
Json = JSON()
Id = String(200)

STREAM_VERSION_CONSTRAINT = "uq_events_stream_id_version"
EVENT_ID_CONSTRAINT = "uq_events_event_id"

events = Table(
    "events",
    metadata,
    Column("position", Position, primary_key=True, autoincrement=True),
    Column("event_id", String(64), nullable=False, unique=True),
    Column("stream_id", Id, nullable=False),
    Column("version", Integer, nullable=False),
    Column("type", String(64), nullable=False),
    Column("run_id", Id, nullable=True),
    Column("round", Integer, nullable=True),
    Column("payload", Json, nullable=False),
    Column("schema_version", Integer, nullable=False),
    Column("occurred_at", Double, nullable=False),
    Column("traceparent", String(64), nullable=True),
    Column("published_at", Double, nullable=True),
    UniqueConstraint("stream_id", "version"),
    sqlite_autoincrement=True,
)
# The outbox relay reads the unpublished tail in position order: a partial index keeps that cheap.
Index(
    "ix_events_unpublished",
    events.c.position,
    postgresql_where=events.c.published_at.is_(None),
    sqlite_where=events.c.published_at.is_(None),
)

inbox = Table(
    "inbox",
    metadata,
    Column("consumer", String(100), nullable=False),
    Column("message_id", String(64), nullable=False),
    Column("processed_at", Double, nullable=False),
    PrimaryKeyConstraint("consumer", "message_id"),
)

blobs = Table(
    "blobs",
    metadata,
    Column("digest", String(64), primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("created_at", Double, nullable=False),
)

runs = Table(
    "runs",
    metadata,
    Column("run_id", Id, primary_key=True),
    Column("config", Json, nullable=False),
    Column("status", String(16), nullable=False),  # running | completed | stopped
    Column("reason", Text, nullable=True),
    Column("rounds_completed", Integer, nullable=False),
    Column("model_version", Integer, nullable=True),
    Column("model_digest", String(64), nullable=True),
    Column("metrics", Json, nullable=True),
    Column("created_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
)

rounds = Table(
    "rounds",
    metadata,
    Column("run_id", Id, nullable=False),
    Column("round", Integer, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("status", String(16), nullable=False),  # open | quorum | aggregated | failed
    Column("model_version", Integer, nullable=False),
    Column("model_digest", String(64), nullable=False),
    Column("selected", Json, nullable=False),
    # client id -> its capability-aware plan (RoundStarted.plans); NULL: projected before revision 0003
    Column("plans", Json, nullable=True),
    Column("deadline", Double, nullable=False),
    Column("started_at", Double, nullable=False),
    Column("quorum_at", Double, nullable=True),
    Column("aggregated_at", Double, nullable=True),
    Column("update_ids", Json, nullable=True),
    Column("partial", Boolean, nullable=True),
    Column("new_model_version", Integer, nullable=True),
    Column("new_model_digest", String(64), nullable=True),
    Column("metrics", Json, nullable=True),
    Column("duration_s", Double, nullable=True),
    Column("failure_reason", Text, nullable=True),
    PrimaryKeyConstraint("run_id", "round"),
)

clients = Table(
    "clients",
    metadata,
    Column("client_id", Id, primary_key=True),
    Column("capabilities", Json, nullable=False),
    Column("registered_at", Double, nullable=False),
    Column("last_seen", Double, nullable=False),
    Column("rounds_joined", Integer, nullable=False),
    Column("epsilon", Double, nullable=True),
    Column("evicted", Boolean, nullable=False),
    Column("evicted_reason", Text, nullable=True),
)

updates = Table(
    "updates",
    metadata,
    Column("update_id", Id, primary_key=True),
    Column("run_id", Id, nullable=False),
    Column("round", Integer, nullable=False),
    Column("client_id", Id, nullable=False),
    Column("num_samples", Integer, nullable=False),
    Column("digest", String(64), nullable=False),
    Column("wire_bytes", BigInteger, nullable=False),
    Column("raw_bytes", BigInteger, nullable=False),
    Column("ratio", Double, nullable=False),
    Column("epsilon", Double, nullable=True),
    Column("metrics", Json, nullable=False),
    Column("late", Boolean, nullable=False),
    Column("model_version", Integer, nullable=True),  # the version it was trained on; NULL: not recorded
    Column("accepted_at", Double, nullable=False),
    UniqueConstraint("run_id", "round", "client_id"),
)

rejections = Table(
    "rejections",
    metadata,
    Column("id", Position, primary_key=True, autoincrement=True),
    Column("run_id", Id, nullable=False),
    Column("round", Integer, nullable=False),
    Column("client_id", Id, nullable=False),
    Column("reason", String(64), nullable=False),
    Column("detail", Text, nullable=False),
    Column("at", Double, nullable=False),
    Index(None, "run_id", "round"),
    sqlite_autoincrement=True,
)

declines = Table(
    "declines",
    metadata,
    Column("id", Position, primary_key=True, autoincrement=True),
    Column("run_id", Id, nullable=False),
    Column("round", Integer, nullable=False),
    Column("client_id", Id, nullable=False),
    Column("reason", String(64), nullable=False),
    Column("at", Double, nullable=False),
    Index(None, "run_id", "round"),
    sqlite_autoincrement=True,
)

privacy = Table(
    "privacy",
    metadata,
    Column("run_id", Id, nullable=False),
    Column("client_id", Id, nullable=False),
    Column("round", Integer, nullable=False),
    Column("epsilon", Double, nullable=False),
    PrimaryKeyConstraint("run_id", "client_id", "round"),
)

PROJECTION_TABLES = (runs, rounds, clients, updates, rejections, declines, privacy)

__all__ = [
    "EVENT_ID_CONSTRAINT",
    "PROJECTION_TABLES",
    "STREAM_VERSION_CONSTRAINT",
    "blobs",
    "clients",
    "declines",
    "events",
    "inbox",
    "metadata",
    "privacy",
    "rejections",
    "rounds",
    "runs",
    "updates",
]
