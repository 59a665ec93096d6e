"""Prometheus metrics of the API: requests by route and status, and gauges read from the log at scrape.

One CollectorRegistry per app, so that several apps in one process (tests) never collide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from persistence.sql_read_model import LogStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class LogStatsCollector(Collector):
    """Yields gauges from the last LogStats handed to it (set just before each scrape renders)."""

    def __init__(self) -> None:
        self.stats = LogStats()

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        yield GaugeMetricFamily(
            "fedbus_log_rounds_aggregated", "Rounds aggregated, all runs", value=s.rounds_aggregated
        )
        yield GaugeMetricFamily("fedbus_log_updates_accepted", "Updates accepted, all runs", value=s.updates_accepted)
        rejected = GaugeMetricFamily("fedbus_log_updates_rejected", "Updates rejected, by reason", labels=["reason"])
        for reason, count in sorted(s.rejected_by_reason.items()):
            rejected.add_metric([reason], count)
        yield rejected
        yield GaugeMetricFamily("fedbus_log_update_bytes_in", "Wire bytes of accepted updates", value=s.bytes_in)
        optional = (
            (
                "fedbus_log_last_compression_ratio",
                "Raw/wire ratio of the last accepted update",
                s.last_compression_ratio,
            ),
            ("fedbus_log_epsilon_max", "Largest epsilon any client reported", s.epsilon_max),
            ("fedbus_log_last_aggregation_duration_seconds", "Duration of the last aggregation", s.last_aggregation_s),
        )
        for name, text, value in optional:
            family = GaugeMetricFamily(name, text)
            if value is not None:
                family.add_metric([], value)
            yield family


class ApiMetrics:
    """The app's registry: a request counter, the open event streams and the log gauges."""

    def __init__(self, *, open_streams: Callable[[], int]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "fedbus_api_requests",
            "HTTP requests served, by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        streams = Gauge("fedbus_api_open_streams", "Event streams open now", registry=self.registry)
        streams.set_function(open_streams)
        self.log_stats = LogStatsCollector()
        self.registry.register(self.log_stats)

    def count(self, route: str, method: str, status: int) -> None:
        self.requests.labels(route=route, method=method, status=str(status)).inc()

    def render(self, stats: LogStats) -> bytes:
        self.log_stats.stats = stats
        return generate_latest(self.registry)


__all__ = ["CONTENT_TYPE", "ApiMetrics", "LogStatsCollector"]
