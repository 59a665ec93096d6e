"""One trace per round across processes: `fedbus up` exports to a real OTLP receiver the test runs."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from persistence.sql_admin import drop_database
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.rabbitmq import fresh_vhost
from tests.telemetry.traces import check_round_traces

PG_ADMIN_URL = os.environ.get("FEDBUS_TEST_PG_ADMIN_URL", "postgresql://root@127.0.0.1:5432/postgres")
DATA_DIR = os.environ.get("FEDBUS_DATA_DIR") or str(Path(__file__).resolve().parents[3] / "shared" / "datasets")


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
        finally:
            asyncio.run(drop_database(PG_ADMIN_URL, database))
        spans = receiver.spans()  # every process flushed its spans before exiting

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["rounds"] == 2
    for round_, held in check_round_traces(spans, rounds=2).items():
        services = {span.service for span in held}
        assert {"fedbus-coordinator", "fedbus-client", "fedbus-aggregator"} <= services, f"round {round_}: {services}"
        clients = {span.instance for span in held if span.service == "fedbus-client" and span.name == "train"}
        assert len(clients) >= 2, f"round {round_}: client spans from {clients}"
