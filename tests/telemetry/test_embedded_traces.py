"""`fedbus run` exports spans like the deployed roles: each round one trace, to a real OTLP receiver and the console."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.otlp_receiver import OtlpReceiver
from tests.telemetry.traces import check_round_traces

DATA_DIR = os.environ.get("FEDBUS_DATA_DIR") or str(Path(__file__).resolve().parents[3] / "shared" / "datasets")


def round_started_traces(database: Path) -> dict[int, str]:
    """round -> the trace id in its RoundStarted event's traceparent (how docs/tracing.md finds a round)."""
    with sqlite3.connect(database) as connection:
        rows = connection.execute("SELECT round, traceparent FROM events WHERE type = 'RoundStarted'").fetchall()
    return {round_: traceparent.split("-")[1] for round_, traceparent in rows}


def console_spans(stderr: str) -> list[dict[str, object]]:
    """The console exporter's spans: one JSON object a line, among the log lines."""
    return [span for line in stderr.splitlines() if line.startswith("{") and "context" in (span := json.loads(line))]


@pytest.mark.slow
def test_an_embedded_run_exports_each_round_as_one_trace(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with OtlpReceiver() as receiver:
        env = {
            **os.environ,
            "FEDBUS_DATA_DIR": DATA_DIR,
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_TRACES_EXPORTER": "otlp,console",
            "OMP_NUM_THREADS": "1",
        }

        done = subprocess.run(
            [sys.executable, "-m", "services.cli.main", "run", "--clients", "3", "--rounds", "2",
             "--train-limit", "1500", "--eval-limit", "500", "--lr", "0.5", "--no-dp", "--out", str(out)],
            env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        spans = receiver.spans()

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rounds = check_round_traces(spans, rounds=2)
    assert {span.service for span in spans} == {"fedbus-run"}
    assert {round_: held[0].trace_id for round_, held in rounds.items()} == round_started_traces(out / "fedbus.db")
    printed = console_spans(done.stderr)
    assert sorted(span["context"]["span_id"][2:] for span in printed) == sorted(span.span_id for span in spans)  # type: ignore[index]
