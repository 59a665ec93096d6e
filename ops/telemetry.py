"""OpenTelemetry for every process: one trace per round, context carried in event envelopes, AMQP headers
and gRPC metadata; configured by the standard OTEL_* variables; JSON logs carrying trace and span ids.

A database span is sampled only under a parent: a query outside any span is the outbox relay, the
coordinator's tick or the API's event stream polling the log several times a second, and would otherwise
be a one-span trace of its own each time, burying the rounds' traces.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

from contracts.errors import ConfigError

_PROPAGATOR = TraceContextTextMapPropagator()
_EXPORTERS = frozenset({"otlp", "console", "none"})
# The database instrumentations mark their spans with these (old and stable semantic conventions).
_DATABASE_KEYS = ("db.system", "db.system.name")
_configured: TracerProvider | None = None


def configure_telemetry(service_name: str, *, instance: str = "") -> TracerProvider:
    """Install the tracer provider once per process; spans go where `exporter_names` says (nowhere unless the
    OTEL_* variables ask), sampled by `trace_sampler`; with no exporter, none is recorded."""
    global _configured
    if _configured is not None:
        return _configured
    attributes: dict[str, Any] = {"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)}
    if instance:
        attributes["service.instance.id"] = instance
    names = exporter_names(os.environ)
    # With nowhere to send spans, record none: each still has its ids (envelopes and logs keep their trace
    # context), but a span nobody exports cost the coordinator ~2 ms of CPU per accepted update.
    provider = TracerProvider(resource=Resource.create(attributes), sampler=trace_sampler() if names else ALWAYS_OFF)
    for exporter in _span_exporters(names):
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
    trace.set_tracer_provider(provider)
    _instrument_grpc()
    _configured = provider
    return provider


def exporting() -> bool:
    """Whether this process's spans go anywhere (`configure_telemetry` found an exporter to send them to)."""
    return _configured is not None and _configured.sampler is not ALWAYS_OFF


def flush_telemetry() -> None:
    """Export the spans still buffered (e.g. at the end of an embedded run, which may not be the process's)."""
    if _configured is not None:
        _configured.force_flush()


def shutdown_telemetry() -> None:
    """Flush pending spans (at the end of a process)."""
    if _configured is not None:
        _configured.shutdown()


def exporter_names(env: Mapping[str, str]) -> frozenset[str]:
    """The span exporters the standard variables ask for: OTEL_TRACES_EXPORTER ("otlp", "console", both
    comma-separated, or "none"); when it is unset, "otlp" if an OTLP endpoint is set; none at all when
    OTEL_SDK_DISABLED=true. An exporter fedbus does not ship is a ConfigError, not a silent nothing."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return frozenset()
    named = frozenset(name.strip().lower() for name in env.get("OTEL_TRACES_EXPORTER", "").split(",") if name.strip())
    if not named:
        endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        return frozenset({"otlp"}) if endpoint else frozenset()
    if unknown := named - _EXPORTERS:
        raise ConfigError(
            "OTEL_TRACES_EXPORTER", f"unknown exporter {', '.join(sorted(unknown))} (otlp, console, none)"
        )
    return named - {"none"}


def _span_exporters(names: frozenset[str]) -> list[SpanExporter]:
    exporters: list[SpanExporter] = []
    if "otlp" in names:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporters.append(OTLPSpanExporter())
    if "console" in names:
        # stderr, one JSON object a line: stdout stays the command's own output, and grep finds a trace id.
        exporters.append(ConsoleSpanExporter(out=sys.stderr, formatter=_one_line))
    return exporters


def _one_line(span: ReadableSpan) -> str:
    return str(span.to_json(indent=None)) + "\n"


class DatabaseSpansNeedAParent(Sampler):
    """The root sampler: a database span without a parent starts no trace; any other root span does."""

    def should_sample(
        self,
        parent_context: otel_context.Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        polling = attributes is not None and any(key in attributes for key in _DATABASE_KEYS)
        decide = ALWAYS_OFF if polling else ALWAYS_ON
        return decide.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return "DatabaseSpansNeedAParent"


def trace_sampler() -> Sampler:
    """A span with a parent follows it (a round's queries join the round); a root goes to `DatabaseSpansNeedAParent`."""
    return ParentBased(root=DatabaseSpansNeedAParent())


def _instrument_grpc() -> None:
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient, GrpcAioInstrumentorServer

    GrpcAioInstrumentorClient().instrument()  # type: ignore[no-untyped-call]
    GrpcAioInstrumentorServer().instrument()  # type: ignore[no-untyped-call]


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def current_traceparent() -> str | None:
    """The W3C traceparent of the current span, or None outside any span."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


def context_of(traceparent: str | None) -> otel_context.Context:
    """The context a traceparent names (an empty one for None), to parent spans on."""
    if not traceparent:
        return otel_context.Context()
    return _PROPAGATOR.extract({"traceparent": traceparent})


@contextlib.contextmanager
def attached(traceparent: str | None) -> Iterator[None]:
    """Make `traceparent` the current context for the block (e.g. while publishing an event)."""
    token = otel_context.attach(context_of(traceparent))
    try:
        yield
    finally:
        otel_context.detach(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per line with the current trace and span ids."""

    def format(self, record: logging.LogRecord) -> str:
        span = trace.get_current_span().get_span_context()
        entry: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if span.is_valid:
            entry["trace_id"] = format(span.trace_id, "032x")
            entry["span_id"] = format(span.span_id, "016x")
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str, *, json_logs: bool) -> None:
    handler = logging.StreamHandler()
    if json_logs:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
