"""`fedbus api` as an OS process: serves the log of an embedded run's folder, stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.api.conftest import run_async
from tests.api.world import seed

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_fedbus_api_serves_a_run_folder_and_stops_on_sigterm(tmp_path: Path) -> None:
    database = tmp_path / "fedbus.db"
    run_async(seed(f"sqlite:///{database}"))
    port = free_port()
    env = os.environ | {"FEDBUS_API_TOKENS": "cli-viewer-91f2:viewer"}
    command = [sys.executable, "-m", "services.cli.main", "--log-level", "INFO", "api", "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--database-url", f"sqlite:///{database}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline, runs = time.monotonic() + DEADLINE_S, None
        while runs is None and time.monotonic() < deadline:
            try:
                headers = {"Authorization": "Bearer cli-viewer-91f2"}
                runs = requests.get(f"http://127.0.0.1:{port}/api/v1/runs", headers=headers, timeout=5).json()
            except requests.ConnectionError:
                time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=DEADLINE_S)
    finally:
        process.kill()

    assert runs is not None and [r["run_id"] for r in runs["runs"]] == ["run-a"]
    assert process.returncode == 0
    assert "GET /api/v1/runs 200" in output and "cli-viewer-91f2" not in output
