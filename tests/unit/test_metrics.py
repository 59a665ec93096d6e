"""Prometheus metrics follow the events, and /metrics serves them."""

from __future__ import annotations

import socket
import urllib.request

from contracts.config import RunConfig
from contracts.events import (
    QuorumReached,
    RoundAggregated,
    RoundStarted,
    RunCreated,
    UpdateAccepted,
    UpdateRejected,
)
from contracts.run_state import state_from_created
from ops.metrics import FedbusMetrics, serve_metrics


def accepted(client: str, *, wire: int, epsilon: float) -> UpdateAccepted:
    return UpdateAccepted(
        run_id="r", round=1, update_id=client, client_id=client, num_samples=10, digest="d" * 64,
        wire_bytes=wire, raw_bytes=wire * 4, ratio=4.0, epsilon=epsilon, metrics={},
    )  # fmt: skip


def sample(metrics: FedbusMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels or None)
    assert value is not None, name
    return value


def test_metrics_count_what_the_events_say() -> None:
    metrics = FedbusMetrics()
    train = {"model": "m"}
    events = [
        (RoundStarted(run_id="r", round=1, attempt=1, model_version=0, model_digest="d", selected=("a", "b", "c"),
                      deadline=9.0, train=train), 100.0),
        (accepted("a", wire=1000, epsilon=1.5), 101.0),
        (accepted("b", wire=500, epsilon=2.5), 102.0),
        (UpdateRejected(run_id="r", round=1, client_id="c", reason="not_finite"), 102.5),
        (QuorumReached(run_id="r", round=1, model_version=0, update_ids=("a", "b"), partial=True), 104.0),
        (RoundAggregated(run_id="r", round=1, model_version=1, model_digest="e", num_updates=2, metrics={},
                         duration_s=0.7), 105.0),
    ]  # fmt: skip

    run = state_from_created(RunCreated(run_id="r", config=RunConfig().to_dict()), 99.0)
    for event, at in events:
        run.apply(event, at)
        metrics.observe(event, at, run)

    assert sample(metrics, "fedbus_updates_accepted_total", late="false") == 2
    assert sample(metrics, "fedbus_updates_rejected_total", reason="not_finite") == 1
    assert sample(metrics, "fedbus_update_bytes_received_total") == 1500
    assert sample(metrics, "fedbus_epsilon_max") == 2.5
    assert sample(metrics, "fedbus_round_duration_seconds_sum") == 4.0
    assert sample(metrics, "fedbus_aggregation_seconds_sum") == 0.7
    assert sample(metrics, "fedbus_rounds_aggregated_total") == 1


def test_metrics_endpoint_serves_the_registry() -> None:
    metrics = FedbusMetrics()
    metrics.rounds_started.inc()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    serve_metrics(metrics, port)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()

    assert "fedbus_rounds_started_total 1.0" in body
