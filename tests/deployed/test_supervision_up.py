"""`fedbus up` whose coordinator, then a client and an aggregator, are killed with SIGKILL mid-run: each is
restarted, and the run completes.

`fedbus up` used to drain every process and exit 1 with a traceback. Its children lead sessions of their
own, so the test finds them by parent pid and kills what is left of them whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.deployed, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
RUN_S = 480.0


def children(parent: int) -> dict[int, str]:
    """pid -> command line of the processes whose parent is `parent`."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if ppid == parent:
            found[int(entry.name)] = command
    return found


def wait_for(output: Path, text: str, process: subprocess.Popen[bytes], within: float) -> None:
    deadline = time.monotonic() + within
    while text not in output.read_text(errors="replace"):
        assert process.poll() is None, f"fedbus up exited {process.returncode}:\n{output.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {text!r} within {within:.0f}s:\n{output.read_text()[-3000:]}"
        time.sleep(0.2)


def wait_for_line(output: Path, first: str, then: str, process: subprocess.Popen[bytes], within: float) -> None:
    """Until one line of `output` holds `first` and, after it, `then`."""
    deadline = time.monotonic() + within
    while not any(first in line and then in line.split(first, 1)[1] for line in output.read_text().splitlines()):
        assert process.poll() is None, f"fedbus up exited {process.returncode}:\n{output.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {first!r}…{then!r} within {within:.0f}s"
        time.sleep(0.2)


def kill_everything(up: subprocess.Popen[bytes], seen: set[int]) -> None:
    for pid in [up.pid, *seen]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        up.wait(timeout=30)


def test_fedbus_up_restarts_a_coordinator_a_client_and_an_aggregator_killed_mid_run_and_the_run_completes(
    amqp_url: str, database_url: str, data_dir: str, tmp_path: Path
) -> None:
    env = {**os.environ, "FEDBUS_AMQP_URL": amqp_url, "FEDBUS_DATABASE_URL": database_url,
           "FEDBUS_DATA_DIR": data_dir, "FEDBUS_DOWNLOAD": "0", "OMP_NUM_THREADS": "1"}  # fmt: skip
    output = tmp_path / "up.log"
    command = [sys.executable, "-m", "services.cli.main", "up", "--clients", "2", "--aggregators", "1",
               "--rounds", "3", "--train-limit", "1500", "--eval-limit", "500", "--lr", "0.5",
               "--round-timeout", "240", "--out", str(tmp_path / "out")]  # fmt: skip
    seen: set[int] = set()
    with output.open("wb") as out:
        up = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                              stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        wait_for(output, "round 1 (attempt 1)", up, within=RUN_S / 2)
        fleet = children(up.pid)
        seen.update(fleet)
        (coordinator,) = [pid for pid, command in fleet.items() if command.endswith(" coordinator")]
        os.kill(coordinator, signal.SIGKILL)
        wait_for(output, "coordinator ended with exit -9 (SIGKILL): restart 1 of 3", up, within=60)
        wait_for(output, "round 2 (attempt 1)", up, within=RUN_S / 2)
        fleet = children(up.pid)
        seen.update(fleet)
        for role in ("client", "aggregator"):
            pid = next(pid for pid, command in fleet.items() if command.endswith(f" {role}"))
            os.kill(pid, signal.SIGKILL)
        for name in ("client-", "aggregator-"):
            wait_for_line(output, name, "ended with exit -9 (SIGKILL): restart 1 of 3", up, within=60)
        seen.update(children(up.pid))
        code = up.wait(timeout=RUN_S)
    finally:
        kill_everything(up, seen)

    log = output.read_text(errors="replace")
    assert code == 0, log[-4000:]
    assert "[fedbus up] coordinator ended with exit -9 (SIGKILL): restart 1 of 3 in 1 s" in log
    for name in ("client", "aggregator"):
        assert re.search(rf"\[fedbus up\] {name}-\d ended with exit -9 \(SIGKILL\): restart 1 of 3", log), log[-4000:]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["rounds"] == 3
    # The restarted coordinator continued the run rather than starting another.
    assert "already in the log: continuing it" in log
    # Lines longer than 80 columns stay whole on a pipe: prefix and end of one log line on one line.
    assert any("[coordinator]" in line and "coordinator serving gRPC on port" in line for line in log.splitlines())
