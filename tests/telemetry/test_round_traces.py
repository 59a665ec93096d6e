"""One trace per round across processes: `fedbus up` exports to a real OTLP receiver the test runs."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path

import pytest

from persistence.sql_admin import drop_database
from tests.support.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.support.rabbitmq import fresh_vhost

PG_ADMIN_URL = os.environ.get("FEDBUS_TEST_PG_ADMIN_URL", "postgresql://root@127.0.0.1:5432/postgres")
DATA_DIR = os.environ.get("FEDBUS_DATA_DIR") or str(Path(__file__).resolve().parents[3] / "shared" / "datasets")


def round_traces(spans: list[ReceivedSpan]) -> dict[int, set[str]]:
    """round number -> the trace ids whose root is that round's `round N` span."""
    rounds: dict[int, set[str]] = defaultdict(set)
    for span in spans:
        if span.name.startswith("round ") and not span.parent_span_id:
            rounds[int(span.attributes["fedbus.round"])].add(span.trace_id)  # type: ignore[call-overload]
    return rounds


@pytest.mark.integration
@pytest.mark.deployed
def test_each_round_is_one_trace_across_coordinator_clients_and_aggregator(tmp_path: Path) -> None:
    database = f"fedbus_traces_{uuid.uuid4().hex[:8]}"
    with fresh_vhost("fedbus-traces") as amqp_url, OtlpReceiver() as receiver:
        env = {
            **os.environ,
            "FEDBUS_AMQP_URL": amqp_url,
            "FEDBUS_DATABASE_URL": PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{database}",
            "FEDBUS_DATA_DIR": DATA_DIR,
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_TRACES_EXPORTER": "otlp",
            "OMP_NUM_THREADS": "1",
        }
        try:
            done = subprocess.run(
                [sys.executable, "-m", "services.cli.main", "up", "--clients", "3", "--aggregators", "1",
                 "--rounds", "2", "--train-limit", "1500", "--eval-limit", "500", "--lr", "0.5",
                 "--out", str(tmp_path / "out")],
                env=env, capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
            summary = json.loads((tmp_path / "out" / "summary.json").read_text())
            assert summary["rounds"] == 2

            # Every process flushed its spans at shutdown; the receiver may still be writing the last batch.
            deadline = time.monotonic() + 30
            while len(traces := round_traces(receiver.spans())) < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            asyncio.run(drop_database(PG_ADMIN_URL, database))

        spans = receiver.spans()
        for round_, trace_ids in sorted(traces.items()):
            assert len(trace_ids) == 1, f"round {round_} started {len(trace_ids)} traces"
            in_trace = [s for s in spans if s.trace_id in trace_ids]
            services = {s.service for s in in_trace}
            clients = {s.instance for s in in_trace if s.service == "fedbus-client" and s.name == "train"}
            assert {"fedbus-coordinator", "fedbus-client", "fedbus-aggregator"} <= services, services
            assert len(clients) >= 2, f"round {round_}: client spans from {clients}"
            names = {s.name for s in in_trace}
            assert {"download model", "train", "upload", "aggregate", "evaluate"} <= names, names
