"""fedbus roles as OS processes in tests: each in a session of its own, output to a file, killed as a group.

A role's process spawns a training pool (multiprocessing "spawn") and a resource tracker; they share the
role's process group, so `os.killpg` takes the whole tree down and a test leaves no orphans behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

TAIL_LINES = 40


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fedbus_cli(*args: str, env: Mapping[str, str], timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run `fedbus <args>` to completion (e.g. `db upgrade`) with exactly `env`."""
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(slots=True, kw_only=True)
class FedbusProcess:
    """One `fedbus <role>` process (the leader of its own process group) and its output file."""

    name: str
    role: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    killed: bool = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def output(self) -> str:
        """Everything the process wrote so far (stdout and stderr)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = TAIL_LINES) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def kill(self, sig: signal.Signals = signal.SIGKILL, *, wait: float = 30.0) -> None:
        """Send `sig` to the whole process group (SIGKILL: the role and its pool die at once) and reap it."""
        self.killed = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)
        try:
            self.popen.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.popen.wait(timeout=wait)

    def group_gone(self, within: float = 10.0) -> bool:
        """Whether every process of the group has exited (polls up to `within` seconds)."""
        deadline = time.monotonic() + within
        while _group_alive(self.pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True


@dataclass(slots=True)
class Fleet:
    """The processes one test started; `stop` (or leaving the `with` block) kills every group."""

    log_dir: Path
    env: dict[str, str]
    processes: dict[str, FedbusProcess] = field(default_factory=dict)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    def start(
        self, name: str, role: str, *, prefix: Sequence[str] = (), args: Sequence[str] = (), **extra_env: str
    ) -> FedbusProcess:
        """Start `fedbus --log-level INFO <role> <args>` with the fleet's environment plus `extra_env`; `prefix`
        runs it through another command (e.g. `ip netns exec NS`, on another host)."""
        if name in self.processes and self.processes[name].returncode is None:
            raise ValueError(f"{name} is already running")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as out:
            popen = subprocess.Popen(
                [*prefix, sys.executable, "-m", "services.cli.main", "--log-level", "INFO", role, *args],
                env={**self.env, **extra_env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = FedbusProcess(name=name, role=role, popen=popen, log_path=log_path)
        self.processes[name] = process
        return process

    def __getitem__(self, name: str) -> FedbusProcess:
        return self.processes[name]

    def unexpected_exits(self) -> list[str]:
        """Processes that exited although the test did not kill them."""
        return [
            f"{p.name} exited with {p.returncode}"
            for p in self.processes.values()
            if not p.killed and p.returncode is not None
        ]

    def tails(self, lines: int = TAIL_LINES) -> str:
        """The last lines of every process's output, for failure reports."""
        parts = [f"----- {p.name} ({p.role}, exit {p.returncode}) -----\n{p.tail(lines)}" for p in self]
        return "\n".join(parts)

    def stop(self) -> list[str]:
        """SIGKILL every process group and reap it; returns the groups that still had members after."""
        for process in self:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        for process in self:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(timeout=30)
        return [p.name for p in self if not p.group_gone()]

    def __iter__(self) -> Iterator[FedbusProcess]:
        return iter(list(self.processes.values()))


__all__ = ["FedbusProcess", "Fleet", "fedbus_cli", "free_port"]
