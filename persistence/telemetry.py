"""Database spans: the SQLAlchemy instrumentation on the log's engine (PostgreSQL or SQLite)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine


def instrument_engine(engine: AsyncEngine) -> None:
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    SQLAlchemyInstrumentor().instrument(engine=engine.sync_engine, enable_commenter=False)
