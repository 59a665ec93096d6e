"""Prometheus metrics of the coordinator and the aggregator, fed from the events they append.

Deriving them from events (not from scattered counters) keeps them consistent with the log; what needs
round state (how long a round took, the most epsilon spent) reads the run-state fold, not a copy of it.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from contracts.events import (
    ClientDeclined,
    Event,
    QuorumReached,
    RoundAggregated,
    RoundFailed,
    RoundStarted,
    RunCompleted,
    UpdateAccepted,
    UpdateRejected,
)
from contracts.run_state import RunState


class FedbusMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.rounds_started = Counter("fedbus_rounds_started", "Rounds started (attempts included)", registry=r)
        self.rounds_aggregated = Counter("fedbus_rounds_aggregated", "Rounds aggregated", registry=r)
        self.rounds_failed = Counter("fedbus_rounds_failed", "Rounds failed", ["reason"], registry=r)
        self.round_duration = Histogram(
            "fedbus_round_duration_seconds", "From RoundStarted to QuorumReached", registry=r,
            buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
        )  # fmt: skip
        self.updates_accepted = Counter("fedbus_updates_accepted", "Updates accepted", ["late"], registry=r)
        self.updates_rejected = Counter("fedbus_updates_rejected", "Updates rejected", ["reason"], registry=r)
        self.declines = Counter("fedbus_client_declines", "Rounds declined by clients", ["reason"], registry=r)
        self.bytes_in = Counter("fedbus_update_bytes_received", "Wire bytes of accepted updates", registry=r)
        self.bytes_out = Counter("fedbus_model_bytes_sent", "Model bytes streamed to clients", registry=r)
        self.compression_ratio = Gauge("fedbus_compression_ratio", "Raw/wire ratio of the last update", registry=r)
        self.epsilon = Gauge("fedbus_epsilon_max", "Largest epsilon a client reported", registry=r)
        self.aggregation_seconds = Histogram(
            "fedbus_aggregation_seconds", "Aggregation time per round", registry=r,
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
        )  # fmt: skip
        self.uploads_shed = Counter(
            "fedbus_uploads_shed", "Uploads refused with RESOURCE_EXHAUSTED under load", registry=r
        )
        self.runs_completed = Counter("fedbus_runs_completed", "Runs completed", ["reason"], registry=r)

    def observe(self, event: Event, at: float, run: RunState | None = None) -> None:
        """Account for one event that was just appended; `run` is its run's state with the event folded in."""
        match event:
            case RoundStarted():
                self.rounds_started.inc()
            case UpdateAccepted():
                self.updates_accepted.labels(late=str(event.late).lower()).inc()
                self.bytes_in.inc(event.wire_bytes)
                self.compression_ratio.set(event.ratio)
                if run is not None and run.epsilon is not None:
                    self.epsilon.set(max(run.epsilon, self._current(self.epsilon)))
            case UpdateRejected():
                self.updates_rejected.labels(reason=event.reason).inc()
            case ClientDeclined():
                self.declines.labels(reason=event.reason).inc()
            case QuorumReached():
                if run is not None and run.current is not None:
                    self.round_duration.observe(max(0.0, at - run.current.started_at))
            case RoundAggregated():
                self.rounds_aggregated.inc()
                self.aggregation_seconds.observe(event.duration_s)
            case RoundFailed():
                self.rounds_failed.labels(reason=event.reason).inc()
            case RunCompleted():
                self.runs_completed.labels(reason=event.reason).inc()
            case _:
                pass

    @staticmethod
    def _current(gauge: Gauge) -> float:
        return float(gauge._value.get())


def serve_metrics(metrics: FedbusMetrics, port: int) -> None:
    """Expose /metrics on `port` (0: off) from a daemon thread."""
    if port:
        start_http_server(port, registry=metrics.registry)
