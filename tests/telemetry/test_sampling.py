"""The sampler: polling the database starts no trace, a round's queries join the round."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ops.telemetry import trace_sampler

QUERY = {"db.system": "postgresql", "db.statement": "SELECT position FROM events WHERE published_at IS NULL"}


@pytest.fixture
def exported() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exported: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider(sampler=trace_sampler())
    provider.add_span_processor(SimpleSpanProcessor(exported))
    return provider


@pytest.mark.parametrize("key", ["db.system", "db.system.name"])
def test_a_database_span_without_a_parent_is_not_exported(
    provider: TracerProvider, exported: InMemorySpanExporter, key: str
) -> None:
    tracer = provider.get_tracer("opentelemetry.instrumentation.asyncpg")

    with tracer.start_as_current_span("SELECT", attributes={key: "postgresql"}) as span:
        recording = span.is_recording()

    assert not recording
    assert exported.get_finished_spans() == ()


def test_a_database_span_under_a_round_joins_its_trace(
    provider: TracerProvider, exported: InMemorySpanExporter
) -> None:
    rounds, database = provider.get_tracer("fedbus.coordinator"), provider.get_tracer("asyncpg")

    with rounds.start_as_current_span("round 1"), database.start_as_current_span("INSERT", attributes=QUERY):
        pass

    names = {span.name: span for span in exported.get_finished_spans()}
    assert set(names) == {"round 1", "INSERT"}
    assert names["INSERT"].context.trace_id == names["round 1"].context.trace_id
    assert names["INSERT"].parent is not None and names["INSERT"].parent.span_id == names["round 1"].context.span_id


def test_a_root_span_that_is_no_query_starts_a_trace(provider: TracerProvider, exported: InMemorySpanExporter) -> None:
    tracer = provider.get_tracer("fedbus.coordinator")

    with tracer.start_as_current_span("round 1", attributes={"fedbus.round": 1}):
        pass

    assert [span.name for span in exported.get_finished_spans()] == ["round 1"]
