"""The compose stack of the repository (compose.yaml) brought up for real with podman-stack.

Skipped when podman is not installed, unless FEDBUS_REQUIRE_SERVICES=1: then the fixture prepares the
machine itself (ops/compose/prepare-host.sh installs podman, docker-compose and the image stand-ins).
Each test session gets its own compose project and free host ports; `down -v` and `podman-stack stop`
always run afterwards. Durations of the phases are printed at the end of the session.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PODMAN_STACK = Path(os.environ.get("PODMAN_STACK", ROOT.parent / "shared" / "tools" / "podman-stack" / "podman-stack"))
DATA_DIR = Path(os.environ.get("FEDBUS_DATA_DIR") or ROOT.parent / "shared" / "datasets")
BUILD_TIMEOUT_S = 1800.0
PORTS = (
    "FEDBUS_AMQP_PORT",
    "FEDBUS_RABBITMQ_UI_PORT",
    "FEDBUS_POSTGRES_PORT",
    "FEDBUS_JAEGER_UI_PORT",
    "FEDBUS_GRPC_PORT",
    "FEDBUS_API_PORT",
)
TIMINGS: dict[str, float] = {}

RUN_CONFIG = """\
[run]
task = "mnist_dp_cnn"
clients = 10  # FEDBUS_CLIENTS says 3: it overrides this, and is the one number the stack needs
rounds = 2
partition = "iid"
compression = "int8"
seed = 0
train_limit = 3000
eval_limit = 1000

[run.privacy]
epsilon = 3.0
delta = 1e-5
max_grad_norm = 1.0

[run.round]
quorum = 1.0
timeout_s = 600.0
local_epochs = 1
batch_size = 64
lr = 0.5
momentum = 0.5
"""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "compose: brings compose.yaml up with podman (minutes; needs root)")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TIMINGS:
        shown = ", ".join(f"{name} {seconds:.0f}s" for name, seconds in TIMINGS.items())
        terminalreporter.write_line(f"compose stack timings: {shown}")


def _unavailable(reason: str) -> None:
    if os.environ.get("FEDBUS_REQUIRE_SERVICES") == "1":
        pytest.fail(f"required (FEDBUS_REQUIRE_SERVICES=1): {reason}")
    pytest.skip(reason)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass(kw_only=True)
class Stack:
    """A running compose project: its name, environment and published ports."""

    project: str
    env: dict[str, str]
    run_id: str
    ports: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=lambda: TIMINGS)
    failure: str | None = None  # why the run did not complete, once a test found out (the next fails at once)

    def compose(self, *args: str, timeout: float = 300.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`docker-compose -p <project> ARGS` in the repository root."""
        command: Sequence[str] = ["docker-compose", "-p", self.project, "-f", str(ROOT / "compose.yaml"), *args]
        return subprocess.run(
            command, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout, check=check
        )

    def sql(self, query: str) -> list[str]:
        """Rows of `query` run by psql inside the postgres container, one string per row."""
        result = self.compose("exec", "-T", "postgres", "psql", "-U", "fedbus", "-d", "fedbus", "-tAc", query)
        return [line for line in result.stdout.splitlines() if line.strip()]

    def restarts(self) -> dict[str, int]:
        """How often each container of the project was restarted by its restart policy (crash loops)."""
        ids = self.compose("ps", "-q", check=False).stdout.split()
        if not ids:
            return {}
        result = subprocess.run(
            ["podman", "inspect", "--format", "{{.Name}} {{.RestartCount}}", *ids],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        counts = {}
        for line in result.stdout.splitlines():
            name, _, count = line.rpartition(" ")
            if name and count.isdigit():
                counts[name] = int(count)
        return counts

    def logs(self, tail: int = 40) -> str:
        result = self.compose("logs", "--no-color", f"--tail={tail}", check=False)
        return result.stdout + result.stderr


def _stack_environment() -> dict[str, str]:
    """podman-stack's `start` prints `export NAME=VALUE` lines: the socket docker-compose talks to."""
    started = subprocess.run([str(PODMAN_STACK), "start"], capture_output=True, text=True, timeout=120, check=True)
    env = dict(os.environ)
    for line in started.stdout.splitlines():
        if line.startswith("export ") and "=" in line:
            name, value = line.removeprefix("export ").split("=", 1)
            env[name] = value
    return env


@pytest.fixture(scope="module")  # down before `make test-compose` goes on to tests/k8s
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """compose.yaml up with three clients and a two-round DP run; torn down with its volumes afterwards."""
    if shutil.which("podman") is None or shutil.which("docker-compose") is None:
        _unavailable("podman or docker-compose is not installed (run ops/compose/prepare-host.sh as root)")
    if not PODMAN_STACK.is_file():
        _unavailable(f"podman-stack not found at {PODMAN_STACK}")
    if not (DATA_DIR / "MNIST" / "raw").is_dir():
        _unavailable(f"MNIST not found under {DATA_DIR}")
    if os.geteuid() != 0:
        _unavailable("podman-stack runs as root")
    started = time.monotonic()
    subprocess.run([str(ROOT / "ops" / "compose" / "prepare-host.sh")], check=True, timeout=900)
    env = _stack_environment()
    TIMINGS["setup"] = time.monotonic() - started

    config = tmp_path_factory.mktemp("compose") / "run.toml"
    config.write_text(RUN_CONFIG)
    config.chmod(0o644)
    config.parent.chmod(0o755)
    ports = dict(zip(PORTS, _free_ports(len(PORTS)), strict=True))
    suffix = uuid.uuid4().hex[:8]
    env.update({name: str(port) for name, port in ports.items()})
    env.update(
        FEDBUS_RUN_CONFIG_FILE=str(config),
        FEDBUS_RUN_ID=f"run-compose-{suffix}",
        FEDBUS_CLIENTS="3",
        FEDBUS_DATA_HOST_DIR=str(DATA_DIR),
    )
    stack = Stack(project=f"fedbus-test-{suffix}", env=env, run_id=env["FEDBUS_RUN_ID"], ports=ports)
    try:
        started = time.monotonic()
        stack.compose("build", timeout=BUILD_TIMEOUT_S)
        TIMINGS["build"] = time.monotonic() - started
        started = time.monotonic()
        stack.compose("up", "-d", timeout=600)
        TIMINGS["up"] = time.monotonic() - started
        yield stack
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"{' '.join(exc.cmd)} failed:\n{exc.stdout}\n{exc.stderr}\n{stack.logs()}")
    finally:
        stack.compose("down", "-v", "--remove-orphans", "-t", "20", timeout=300, check=False)
        subprocess.run([str(PODMAN_STACK), "stop"], timeout=60, check=False)
