"""Telemetry for a deployed process: the tracer provider, then the adapters' instrumentations."""

from __future__ import annotations

from broker.telemetry import instrument_broker
from ops.telemetry import configure_telemetry
from persistence.telemetry import instrument_database


def observe(service: str, instance: str, *, database: bool = False) -> None:
    configure_telemetry(f"fedbus-{service}", instance=instance)
    instrument_broker()
    if database:
        instrument_database()
