"""Telemetry for a process: the tracer provider, then the instrumentations of the adapters it really uses."""

from __future__ import annotations

from broker.telemetry import instrument_broker
from ops.telemetry import configure_telemetry, exporting
from persistence.telemetry import instrument_database


def observe(service: str, instance: str, *, database: bool = False) -> None:
    """A deployed role (`fedbus coordinator`, `aggregator`, `client`): RabbitMQ, and PostgreSQL if it has one."""
    configure_telemetry(f"fedbus-{service}", instance=instance)
    instrument_broker()
    if database and exporting():  # a span per query is only worth its cost where it is exported
        instrument_database()


def observe_embedded() -> None:
    """`fedbus run`: every role in one process, so one provider (service `fedbus-run`; the `fedbus.coordinator`,
    `fedbus.client` and `fedbus.aggregator` tracers tell the roles apart). Its in-memory broker and SQLite log
    have no instrumentation: the round's context travels in the envelopes, the gRPC spans join it."""
    configure_telemetry("fedbus-run")
