"""Telemetry for a deployed process: the tracer provider, then the adapters' instrumentations."""

from __future__ import annotations

from broker.telemetry import instrument_broker
from ops.telemetry import configure_telemetry
from persistence.sql_event_log import SqlEventLog
from persistence.telemetry import instrument_engine


def observe(service: str, instance: str, event_log: SqlEventLog | None = None) -> None:
    configure_telemetry(f"fedbus-{service}", instance=instance)
    instrument_broker()
    if event_log is not None:
        instrument_engine(event_log.engine)
