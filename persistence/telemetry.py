"""Database spans: the asyncpg instrumentation (PostgreSQL). The SQLAlchemy instrumentation does not support
SQLAlchemy 2.1 yet, and the embedded SQLite log is not traced.

A query joins the span that made it (a round's appends, an upload's admission); a query outside any span is
polling (the outbox relay, the coordinator's tick, the API's event stream) and is not sampled
(`ops.telemetry.trace_sampler`), so polling never starts a trace of its own.
"""

from __future__ import annotations


def instrument_database() -> None:
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

    instrumentor = AsyncPGInstrumentor()  # type: ignore[no-untyped-call]
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument()
