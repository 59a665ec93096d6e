"""Which span exporters the standard OTEL_* variables ask for, and what the console exporter prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from contracts.errors import ConfigError
from ops.telemetry import exporter_names

ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({}, set()),
        (ENDPOINT, {"otlp"}),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4317"}, {"otlp"}),
        ({"OTEL_TRACES_EXPORTER": "console"}, {"console"}),
        ({"OTEL_TRACES_EXPORTER": "otlp, Console"}, {"otlp", "console"}),
        ({**ENDPOINT, "OTEL_TRACES_EXPORTER": "none"}, set()),
        ({**ENDPOINT, "OTEL_TRACES_EXPORTER": "console"}, {"console"}),
        ({**ENDPOINT, "OTEL_SDK_DISABLED": "true"}, set()),
    ],
)
def test_the_standard_variables_choose_the_exporters(env: dict[str, str], names: set[str]) -> None:
    assert exporter_names(env) == names


def test_an_exporter_fedbus_does_not_ship_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as raised:
        exporter_names({"OTEL_TRACES_EXPORTER": "otlp,zipkin"})

    assert raised.value.field == "OTEL_TRACES_EXPORTER" and "zipkin" in str(raised.value)


PROCESS = """
from ops.telemetry import configure_telemetry, shutdown_telemetry, tracer
configure_telemetry("fedbus-test")
with tracer("fedbus.coordinator").start_as_current_span("round 1", attributes={"fedbus.round": 1}):
    pass
shutdown_telemetry()
"""


def test_the_console_exporter_prints_one_json_span_a_line_on_stderr() -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}

    done = subprocess.run(
        [sys.executable, "-c", PROCESS],
        env={**env, "OTEL_TRACES_EXPORTER": "console"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    span = json.loads(line)
    assert span["name"] == "round 1" and span["resource"]["attributes"]["service.name"] == "fedbus-test"
    assert span["attributes"] == {"fedbus.round": 1} and span["parent_id"] is None
