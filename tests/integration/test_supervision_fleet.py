"""The process fleet of `fedbus up`, with small real processes: restarts, giving up, stopping, unwrapped output."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import signal
import sys
from collections.abc import Sequence

from rich.console import Console

from services.cli.supervisor import Fleet, RestartPolicy
from tests.support.polling import eventually

FAST = RestartPolicy(limit=2, first_delay_s=0.05, max_delay_s=0.1)
LIVENESS_S = 60.0


def python(code: str) -> Sequence[str]:
    return [sys.executable, "-c", code]


def captured() -> tuple[Console, io.StringIO]:
    """A console as `fedbus up` has on a pipe: not a terminal, 80 columns."""
    out = io.StringIO()
    return Console(file=out, width=80, force_terminal=False), out


async def until_failed(fleet: Fleet) -> str:
    async def failure() -> str | None:
        return fleet.failure

    reason = await eventually(failure, lambda found: found is not None, within=LIVENESS_S, interval=0.05)
    assert reason is not None
    return reason


async def until_printed(out: io.StringIO, text: str) -> None:
    async def printed() -> str:
        return out.getvalue()

    await eventually(printed, lambda found: text in found, within=LIVENESS_S, interval=0.05)


async def run_dying(code: int) -> tuple[str, str]:
    console, out = captured()
    fleet = Fleet(console, FAST)
    await fleet.start("role", python(f"import sys; print('starting'); sys.exit({code})"), dict(os.environ))
    try:
        failure = await until_failed(fleet)
    finally:
        await fleet.stop(grace_s=5)
    return failure, out.getvalue()


def test_a_process_that_dies_is_restarted_up_to_the_limit_each_restart_one_line() -> None:
    failure, output = asyncio.run(run_dying(3))

    assert output.count("[role] starting") == 3  # the first start and two restarts
    assert "[fedbus up] role ended with exit 3: restart 1 of 2 in 0.05 s" in output
    assert "[fedbus up] role ended with exit 3: restart 2 of 2 in 0.1 s" in output
    assert failure == "role ended with exit 3 after 2 restarts: giving up"


def test_a_process_that_exits_with_a_configuration_error_is_not_restarted() -> None:
    failure, output = asyncio.run(run_dying(2))

    assert output.count("[role] starting") == 1
    assert ": restart " not in output
    assert "exited 2 (a configuration error" in failure


async def stop_with_the_pipe_held(console: Console, out: io.StringIO) -> float:
    """A role whose child left its session and kept the output pipe; returns how long `stop` took."""
    keeper = "import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], "
    keeper += "start_new_session=True); print('keeper', p.pid, flush=True); import time; time.sleep(120)"
    fleet = Fleet(console, FAST)
    await fleet.start("role", python(keeper), dict(os.environ))
    await until_printed(out, "keeper")
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(LIVENESS_S):
        await fleet.stop(grace_s=5, drain_s=0.5)
    return loop.time() - started


def test_stop_returns_although_a_descendant_outside_the_group_holds_the_output_pipe() -> None:
    console, out = captured()
    try:
        took = asyncio.run(stop_with_the_pipe_held(console, out))
    finally:
        for pid in re.findall(r"keeper (\d+)", out.getvalue()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)

    assert took < 10.0


async def print_long_line(console: Console, out: io.StringIO, line: str) -> None:
    fleet = Fleet(console, FAST)
    await fleet.start("role", python(f"import time; print({line!r}, flush=True); time.sleep(60)"), dict(os.environ))
    await until_printed(out, "not markup")
    await fleet.stop(grace_s=5)


def test_a_long_output_line_is_not_wrapped_when_the_output_is_no_terminal() -> None:
    console, out = captured()
    line = "INFO fedbus.client: " + " ".join(f"word{i}" for i in range(40)) + " [bold]not markup[/bold]"

    asyncio.run(print_long_line(console, out, line))

    assert f"[role] {line}\n" in out.getvalue()
