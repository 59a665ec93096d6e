"""Database spans: the asyncpg instrumentation (PostgreSQL). The SQLAlchemy instrumentation does not support
SQLAlchemy 2.1 yet, and the embedded SQLite log is not traced."""

from __future__ import annotations


def instrument_database() -> None:
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

    instrumentor = AsyncPGInstrumentor()  # type: ignore[no-untyped-call]
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument()
