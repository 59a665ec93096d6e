"""AMQP spans: the aio-pika instrumentation (publish and consume), with context in the message headers."""

from __future__ import annotations


def instrument_broker() -> None:
    from opentelemetry.instrumentation.aio_pika import AioPikaInstrumentor

    instrumentor = AioPikaInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument()
