"""A role that `fedbus up` started (`--parent-pid`) drains and exits when `fedbus up` is killed with SIGKILL.

The role here is `fedbus api` on a seeded SQLite log: the cheapest one that serves until it is told to stop.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.api.conftest import run_async
from tests.api.world import seed
from tests.support.processes import free_port

ROOT = Path(__file__).resolve().parents[2]
LIVENESS_S = 60.0
GONE_WITHIN_S = 20.0

# A stand-in for `fedbus up`: it starts the role as `fedbus up` does and waits to be killed.
PARENT = """
import os, subprocess, sys, time
role = subprocess.Popen([sys.executable, "-m", "services.cli.main", "--parent-pid", str(os.getpid()), *sys.argv[1:]])
print("role", role.pid, flush=True)
time.sleep(300)
"""


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie nobody reaped yet has ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def serving(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_a_role_started_with_its_parents_pid_exits_when_that_parent_is_killed(tmp_path: Path) -> None:
    database = tmp_path / "fedbus.db"
    run_async(seed(f"sqlite:///{database}"))
    port = free_port()
    role_args = ["api", "--port", str(port), "--database-url", f"sqlite:///{database}"]
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, *role_args], cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert parent.stdout is not None
        role = int(parent.stdout.readline().split()[1])
        deadline = time.monotonic() + LIVENESS_S
        while not serving(port):
            assert alive(role) and time.monotonic() < deadline, "the role did not start serving"
            time.sleep(0.1)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + GONE_WITHIN_S
        while alive(role) and time.monotonic() < deadline:
            time.sleep(0.1)
        survived = alive(role)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(parent.pid, signal.SIGKILL)

    assert not survived
