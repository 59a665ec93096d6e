"""/metrics: Prometheus text with requests by route and status and gauges read from the log."""

from __future__ import annotations

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from services.api.server import ApiServer


def scrape(api: ApiServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = requests.get(api.url + "/metrics", timeout=10).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_gauges_summarize_the_log(api: ApiServer) -> None:
    samples = scrape(api)

    assert samples[("fedbus_log_rounds_aggregated", ())] == 2
    assert samples[("fedbus_log_updates_accepted", ())] == 4
    assert samples[("fedbus_log_updates_rejected", (("reason", "norm"),))] == 2
    assert samples[("fedbus_log_update_bytes_in", ())] == 2 * (2_000 + 2_001)
    assert samples[("fedbus_log_last_compression_ratio", ())] == pytest.approx(3.9)
    assert samples[("fedbus_log_epsilon_max", ())] == pytest.approx(1.1)
    assert samples[("fedbus_log_last_aggregation_duration_seconds", ())] == pytest.approx(0.25)


def test_requests_are_counted_by_route_template_and_status(api: ApiServer) -> None:
    requests.get(api.url + "/api/v1/runs/does-not-exist", timeout=10)  # no token: 401 before the lookup

    samples = scrape(api)

    key = ("fedbus_api_requests_total", (("method", "GET"), ("route", "/api/v1/runs/<run_id>"), ("status", "401")))
    assert samples[key] >= 1
