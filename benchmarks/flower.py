"""fedbus against Flower on the same MNIST DP task, each in a single-process and a multi-process deployment.

The task is fedbus's in every system: `mnist_dp_cnn`, an IID split of the first `train_limit` MNIST training
samples over the clients (`partition_indices`, seed 0), DP-SGD through Opacus in each client with the same
`train_local` (`plan_privacy` noise for epsilon 3 at delta 1e-5 over the planned rounds; clip 1.0, batch 128,
lr 0.5, momentum 0.5, one local epoch; fedbus's per-round seed), FedAvg weighted by samples, every client in
every round, and `evaluate` on the first `eval_limit` test samples after each round. The Flower app
(benchmarks/flower_app) imports that code from `workers.learning`, so only the orchestration differs.

Runs, one after the other:
- fedbus embedded: `benchmarks.federation.federate` (gRPC on loopback, SQLite log, in-memory broker; training in
  the shared process pool), quorum 1.0, fp32 updates; then the same with int8 updates, fedbus's default codec.
- fedbus deployed: `fedbus up` as a subprocess: coordinator, 2 aggregators and one process per client against
  the local RabbitMQ and PostgreSQL (FEDBUS_AMQP_URL / FEDBUS_DATABASE_URL), quorum 1.0, fp32.
- Flower simulation: `flower-superlink --simulation` on free loopback ports and `flwr run` with the federation
  config num_supernodes=clients, 1 CPU per client and 2 CPUs for Ray (two client actors at a time).
- Flower deployment: `flower-superlink` and one `flower-supernode` per client (node config
  partition-id/num-partitions) as processes on loopback, then `flwr run`; every process is stopped afterwards.

Flower (flwr[simulation], pinned) lives in its own virtual environment, `.bench/flower-venv`, created on first
use and reused while the pin matches; its grpcio and protobuf never touch fedbus's .venv. torch, torchvision
and opacus are not installed a second time: a `.pth` file in that environment adds a folder of symlinks to
fedbus's own copies of them and of their dependencies (those the Flower environment lacks), appended after
Flower's packages on sys.path. The repository root goes on PYTHONPATH so the app imports `workers.learning`.

Times: a round runs from the moment its training is sent out (RoundStarted / Flower's configure_train) to the
end of its evaluation (RoundAggregated / Flower's evaluate_fn); time to target counts from the run's start
(RunCreated / the ServerApp's start) to the first round at or above the target; total wall is measured here,
from launching a system to its exit, start-up and shutdown included.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as metadata
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from packaging.requirements import Requirement

from benchmarks import plots
from benchmarks.federation import bench_config, federate
from benchmarks.isolation import free_port, fresh_deployment

FLWR_VERSION = "1.42.0"
PINS = (f"flwr[simulation]=={FLWR_VERSION}", "numpy==2.4.6")  # numpy: fedbus's pin (setup.cfg)
# taken from fedbus's environment through the .pth file: the training stack and what contracts import (codecs)
SHARED = ("torch", "torchvision", "opacus", "zstandard", "msgpack")
ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "benchmarks" / "flower_app"
VENV = ROOT / ".bench" / "flower-venv"
_LINKS = "fedbus-torch"  # the folder of symlinks inside the Flower environment
_STAMP = ".fedbus-ready"


class FlowerUnavailable(RuntimeError):
    """The Flower environment could not be created or imported."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Round:
    round: int
    accuracy: float
    duration_s: float
    elapsed_s: float


@dataclass(slots=True, kw_only=True)
class SystemRun:
    """One system's run: its rounds, its wall time from launch to exit, or why it failed."""

    system: str
    engine: str
    rounds: list[Round] = field(default_factory=list)
    wall_s: float = 0.0
    error: str | None = None


# ---------------------------------------------------------------------------------------------------------
# The Flower environment


def _python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _site_packages(venv: Path) -> Path:
    return venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def _stamp_text() -> str:
    return json.dumps({"pins": PINS, **{name: metadata.version(name) for name in SHARED}})


def flower_ready(venv: Path = VENV) -> bool:
    """Whether the Flower environment exists with the pinned version (no subprocess, no install)."""
    stamp = venv / _STAMP
    return (
        stamp.is_file()
        and stamp.read_text() == _stamp_text()
        and (_site_packages(venv) / f"flwr-{FLWR_VERSION}.dist-info").is_dir()
    )


def ensure_flower(venv: Path = VENV, *, timeout_s: float = 1200.0) -> Path:
    """Create or repair the Flower environment; its python. FlowerUnavailable with the reason on failure."""
    if flower_ready(venv):
        return _python(venv)
    try:
        if not _python(venv).exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
        subprocess.run(
            [str(_python(venv)), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *PINS],
            check=True,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        _link_shared(venv)
        subprocess.run(
            [str(_python(venv)), "-c", "import flwr, torch, opacus, workers.learning.training"],
            check=True,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            cwd=ROOT,
        )
    except subprocess.CalledProcessError as exc:
        raise FlowerUnavailable(f"{shlex.join(map(str, exc.cmd))[:120]}: {_last_line(exc.stderr)}") from exc
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FlowerUnavailable(str(exc)) from exc
    (venv / _STAMP).write_text(_stamp_text())
    return _python(venv)


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(roots: Sequence[str]) -> list[metadata.Distribution]:
    """The installed distributions `roots` need, following the extras they ask for (this environment's)."""
    seen: dict[str, metadata.Distribution] = {}
    todo: list[tuple[str, frozenset[str]]] = [(name, frozenset()) for name in roots]
    done: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        key = _normalize(name)
        if (key, extras) in done:
            continue
        done.add((key, extras))
        dist = seen.setdefault(key, metadata.distribution(name))
        for line in dist.requires or []:
            requirement = Requirement(line)
            wanted = extras or frozenset({""})
            if requirement.marker and not any(requirement.marker.evaluate({"extra": e}) for e in wanted):
                continue
            todo.append((requirement.name, frozenset(requirement.extras)))
    return list(seen.values())


def _link_shared(venv: Path) -> None:
    """Symlink fedbus's torch, torchvision, opacus and what they need (unless Flower's env has it); a .pth."""
    site = _site_packages(venv)
    links = venv / _LINKS
    links.mkdir(exist_ok=True)
    for old in links.iterdir():
        old.unlink()
    have = {_normalize(p.name.split("-")[0]) for p in site.glob("*.dist-info")}
    for dist in _closure(SHARED):
        if _normalize(dist.metadata["Name"]) in have:
            continue  # Flower's environment has its own copy, which wins
        base = Path(str(dist.locate_file("")))
        for top in sorted({f.parts[0] for f in dist.files or [] if f.parts}):
            target = base / top
            skip = top in ("..", "__pycache__") or top.endswith(".pth") or (ROOT / top).exists()
            if skip or not target.exists() or (site / top).exists() or (links / top).exists():
                continue
            (links / top).symlink_to(target)
    (site / f"{_LINKS}.pth").write_text(f"{links}\n")


# ---------------------------------------------------------------------------------------------------------
# Processes


def _last_line(text: str | bytes | None) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return (lines[-1] if lines else "no output")[:300]


class _Fleet:
    """Child processes in their own process groups, output to log files; `stop` ends every group."""

    def __init__(self, logs: Path) -> None:
        self._logs = logs
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._files: list[IO[bytes]] = []

    def start(self, name: str, command: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        log = (self._logs / f"{name}.log").open("wb")
        self._files.append(log)
        process = subprocess.Popen(
            list(command), env=dict(env), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.processes[name] = process
        return process

    def failed(self) -> list[str]:
        return [f"{n} exited {p.returncode}" for n, p in self.processes.items() if p.returncode not in (None, 0)]

    def tail(self, name: str) -> str:
        path = self._logs / f"{name}.log"
        return _last_line(path.read_bytes()[-4000:]) if path.exists() else "no log"

    def stop(self, grace_s: float = 10.0) -> None:
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # the group's leftovers (ClientApp or Ray processes)
            process.wait()
        for log in self._files:
            log.close()


def _wait_http(port: int, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited {process.returncode} while starting")
        url = f"http://127.0.0.1:{port}/health"
        with contextlib.suppress(OSError, urllib.error.URLError), urllib.request.urlopen(url, timeout=1.0) as reply:
            if reply.status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"not ready on port {port} after {timeout_s:.0f} s")


# ---------------------------------------------------------------------------------------------------------
# Flower


@dataclass(frozen=True, slots=True, kw_only=True)
class Sizes:
    clients: int
    rounds: int
    train_limit: int | None
    eval_limit: int | None
    data_dir: str | None


def _flower_env(venv: Path, home: Path, data_dir: str | None) -> dict[str, str]:
    env = {
        **os.environ,
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "OMP_NUM_THREADS": "1",
        "RAY_DEDUP_LOGS": "0",
    }
    env.pop("VIRTUAL_ENV", None)
    if data_dir:
        env["FEDBUS_DATA_DIR"] = data_dir
    return env


def _run_config(sizes: Sizes, timings: Path) -> str:
    values: dict[str, object] = {
        "num-rounds": sizes.rounds,
        "num-nodes": sizes.clients,
        "train-limit": sizes.train_limit or 0,
        "eval-limit": sizes.eval_limit or 0,
        "data-dir": sizes.data_dir or "",
        "timings": str(timings),
    }
    return " ".join(f"{k}={json.dumps(v)}" for k, v in values.items())


def run_flower(venv: Path, sizes: Sizes, *, simulation: bool, timeout_s: float) -> SystemRun:
    """One Flower run (simulation or deployment engine) on free loopback ports; every process stopped after."""
    result = SystemRun(system="Flower", engine="simulation" if simulation else "deployment")
    with tempfile.TemporaryDirectory(prefix="fedbus-flower-") as folder:
        work = Path(folder)
        home = work / "flwr-home"
        home.mkdir()
        timings = work / "timings.json"
        link = free_port()
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\naddress = "127.0.0.1:{link}"\ninsecure = true\n'
        )
        env = _flower_env(venv, home, sizes.data_dir)
        bin_ = venv / "bin"
        fleet = _Fleet(work)
        started = time.perf_counter()
        try:
            superlink = [str(bin_ / "flower-superlink"), "--insecure", "--isolation", "subprocess"]
            superlink += ["--host", "127.0.0.1", "--port", str(link), "--disable-runtime-dependency-installation"]
            superlink += ["--simulation"] if simulation else []
            _wait_http(link, fleet.start("superlink", superlink, env), timeout_s=120.0)
            if not simulation:
                for index in range(sizes.clients):
                    node = f"partition-id={index} num-partitions={sizes.clients}"
                    fleet.start(
                        f"supernode-{index}",
                        [str(bin_ / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{link}",
                         "--node-config", node, "--host", "127.0.0.1", "--port", str(free_port())],
                        env,
                    )  # fmt: skip
            command = [str(bin_ / "flwr"), "run", str(APP), "bench", "--stream"]
            command += ["--run-config", _run_config(sizes, timings)]
            if simulation:
                federation = f"num_supernodes={sizes.clients} client_resources_num_cpus=1 init_args_num_cpus=2"
                command += ["--federation-config", federation]
            client = fleet.start("flwr-run", command, env)
            deadline = time.monotonic() + timeout_s
            while client.poll() is None and not _finished(timings) and time.monotonic() < deadline:
                if fleet.processes["superlink"].poll() is not None:
                    break
                time.sleep(0.5)
            if not _finished(timings):
                why = fleet.failed() or [f"not finished after {timeout_s:.0f} s"]
                raise RuntimeError(f"{'; '.join(why)}: {fleet.tail('flwr-run')} | {fleet.tail('superlink')}")
            with contextlib.suppress(subprocess.TimeoutExpired):
                client.wait(30.0)  # `flwr run --stream` returns once the run's logs are all out
            result.wall_s = time.perf_counter() - started
            result.rounds = _flower_rounds(timings)
        except Exception as exc:  # a failed system is a row that says why, not a failed benchmark
            result.error = f"{type(exc).__name__}: {exc}"
        finally:
            fleet.stop()
    return result


def _finished(timings: Path) -> bool:
    try:
        return bool(json.loads(timings.read_text()).get("finished"))
    except (OSError, ValueError):
        return False


def _flower_rounds(timings: Path) -> list[Round]:
    rows = json.loads(timings.read_text())["rounds"]
    return [
        Round(
            round=int(r["round"]),
            accuracy=float(r["accuracy"]),
            duration_s=float(r["ended_s"]) - float(r["started_s"]),
            elapsed_s=float(r["ended_s"]),
        )
        for r in rows
    ]


# ---------------------------------------------------------------------------------------------------------
# fedbus


def run_fedbus_embedded(pool: Executor, sizes: Sizes, *, compression: str) -> SystemRun:
    result = SystemRun(system="fedbus", engine=f"embedded, {compression}")
    config = bench_config(
        clients=sizes.clients, rounds=sizes.rounds, train_limit=sizes.train_limit, eval_limit=sizes.eval_limit,
        epsilon=3.0, compression=compression, quorum=1.0,
    )  # fmt: skip
    try:
        run = federate(config, pool, data_dir=sizes.data_dir)
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    result.wall_s = run.wall_s
    result.rounds = [
        Round(round=r.round, accuracy=r.accuracy, duration_s=r.duration_s, elapsed_s=r.elapsed_s) for r in run.rows
    ]
    return result


def run_fedbus_up(sizes: Sizes, *, timeout_s: float) -> SystemRun:
    """`fedbus up` as a subprocess on the local RabbitMQ and PostgreSQL (a fresh vhost and database), fp32.

    Its rounds come from <out>/metrics.json, which `fedbus up` writes from the run's events.
    """
    result = SystemRun(system="fedbus", engine="deployed (fedbus up), fp32")
    config = bench_config(
        clients=sizes.clients, rounds=sizes.rounds, train_limit=sizes.train_limit, eval_limit=sizes.eval_limit,
        epsilon=3.0, compression="fp32", quorum=1.0,
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="fedbus-up-") as folder, fresh_deployment() as urls:
        work = Path(folder)
        (work / "run.json").write_text(json.dumps({"run": config.to_dict()}))
        env = {**os.environ, **urls, "FEDBUS_STATE_DIR": str(work / "state"), "OMP_NUM_THREADS": "1"}
        if sizes.data_dir:
            env["FEDBUS_DATA_DIR"] = sizes.data_dir
        fleet = _Fleet(work)
        command = [sys.executable, "-m", "services.cli.main", "up", "--config", str(work / "run.json")]
        started = time.perf_counter()
        try:
            process = fleet.start("fedbus-up", [*command, "--out", str(work / "out")], env)
            try:
                code = process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"not finished after {timeout_s:.0f} s: {fleet.tail('fedbus-up')}") from None
            result.wall_s = time.perf_counter() - started
            if code != 0 or not (work / "out" / "metrics.json").exists():
                raise RuntimeError(f"exited {code}: {fleet.tail('fedbus-up')}")
            rows = json.loads((work / "out" / "metrics.json").read_text())
            result.rounds = [
                Round(
                    round=int(r["round"]),
                    accuracy=float(r["accuracy"]),
                    duration_s=float(r["duration_s"]),
                    elapsed_s=float(r["elapsed_s"]),
                )
                for r in rows
            ]
        except Exception as exc:
            result.error = f"{type(exc).__name__}: {exc}"
        finally:
            fleet.stop(grace_s=30.0)
    return result


# ---------------------------------------------------------------------------------------------------------
# The section


def run(
    pool: Executor,
    *,
    data_dir: str | None,
    clients: int,
    rounds: int,
    train_limit: int | None,
    eval_limit: int | None,
    target: float,
    workers: int,
    install: bool = True,
    deployed: bool = True,
    plot: Path | None = None,
) -> list[str]:
    """Every system on the same task, side by side; `install` False: Flower only if its venv already exists."""
    sizes = Sizes(clients=clients, rounds=rounds, train_limit=train_limit, eval_limit=eval_limit, data_dir=data_dir)
    timeout_s = 600.0 + 300.0 * rounds
    runs = [
        run_fedbus_embedded(pool, sizes, compression="fp32"),
        run_fedbus_embedded(pool, sizes, compression="int8"),
    ]
    if deployed:
        runs.append(run_fedbus_up(sizes, timeout_s=timeout_s))
    flower_error: str | None = None
    if install or flower_ready():
        try:
            ensure_flower()
        except FlowerUnavailable as exc:
            flower_error = f"Flower {FLWR_VERSION} could not be installed: {exc}"
    else:
        flower_error = f"Flower skipped: no Flower environment at {VENV.relative_to(ROOT)} (install=False)"
    if flower_error is None:
        runs.append(run_flower(VENV, sizes, simulation=True, timeout_s=timeout_s))
        if deployed:
            runs.append(run_flower(VENV, sizes, simulation=False, timeout_s=timeout_s))
    lines = _render(runs, sizes, target=target, workers=workers, flower_error=flower_error)
    curves = {(r.system, r.engine): [(x.elapsed_s, x.accuracy) for x in r.rounds] for r in runs if r.rounds}
    if plot is not None and curves:
        plots.accuracy_over_time(plot, curves, f"MNIST DP task, {clients} clients: fedbus and Flower {FLWR_VERSION}")
        lines += ["", f"![accuracy over wall-clock time, every system]({plot.name})"]
    return lines


def _render(runs: list[SystemRun], sizes: Sizes, *, target: float, workers: int, flower_error: str | None) -> list[str]:
    samples = f"the first {sizes.train_limit:,}" if sizes.train_limit else "all 60,000"
    tests = f"the first {sizes.eval_limit:,}" if sizes.eval_limit else "all 10,000"
    lines = [
        f"The same task in every system: `mnist_dp_cnn`, {sizes.clients} clients sharing {samples} MNIST training "
        f"samples (IID, fedbus's seeded split), {sizes.rounds} rounds of one local epoch of DP-SGD through Opacus "
        "with fedbus's `train_local` (epsilon 3 at delta 1e-5 over the planned rounds, clip 1.0, batch 128, lr 0.5, "
        "momentum 0.5), FedAvg weighted by samples over every client in every round (quorum 1.0), fp32 updates "
        f"unless noted, test accuracy on {tests} test samples after each round with fedbus's `evaluate`. The Flower "
        f"app imports that learning code, so only the orchestration differs. fedbus embedded: one process, gRPC on "
        f"loopback, SQLite log, training in a pool of {workers} processes. fedbus deployed: `fedbus up`, one OS "
        "process per client plus coordinator and 2 aggregators over RabbitMQ, PostgreSQL and gRPC. Flower "
        f"{FLWR_VERSION} simulation: SuperLink with the Ray simulation engine, {sizes.clients} virtual SuperNodes, "
        "1 CPU each and 2 CPUs for Ray (2 client actors at a time). Flower deployment: one SuperLink and "
        f"{sizes.clients} SuperNode processes on loopback (each ClientApp in a subprocess). A round runs from "
        "sending out its training to the end of its evaluation; time to target from the run's start; total wall "
        "from launching the system to its exit.",
        "",
        f"| system | engine | rounds | time per round (min / median / max) | time to {target:.0%} | final accuracy "
        "| total wall |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [_row(r, target) for r in runs]
    pairs = [("embedded, fp32", "simulation"), ("deployed (fedbus up), fp32", "deployment")]
    ratios = [r for r in (_ratio(runs, ours, theirs, target) for ours, theirs in pairs) if r]
    if ratios:
        lines += ["", "fedbus / Flower (below 1: fedbus faster): " + "; ".join(ratios) + "."]
    if flower_error:
        lines += ["", f"_{flower_error}_"]
    return lines


def _reached(rounds: list[Round], target: float) -> Round | None:
    return next((r for r in rounds if r.accuracy >= target), None)


def _row(run: SystemRun, target: float) -> str:
    if run.error is not None:
        error = run.error.replace("|", "/").replace("\n", " ")[:300]
        return f"| {run.system} | {run.engine} | - | failed: {error} | - | - | - |"
    times = [r.duration_s for r in run.rounds]
    spread = f"{min(times):.2f} / {statistics.median(times):.2f} / {max(times):.2f} s" if times else "-"
    hit = _reached(run.rounds, target)
    to_target = f"{hit.elapsed_s:.1f} s (round {hit.round})" if hit else f"not in {len(run.rounds)}"
    final = f"{run.rounds[-1].accuracy:.2%}" if run.rounds else "-"
    wall = f"{run.wall_s:.1f} s"
    return f"| {run.system} | {run.engine} | {len(run.rounds)} | {spread} | {to_target} | {final} | {wall} |"


def _ratio(runs: list[SystemRun], ours: str, theirs: str, target: float) -> str | None:
    mine = next((r for r in runs if r.system == "fedbus" and r.engine == ours and r.rounds and not r.error), None)
    other = next((r for r in runs if r.system == "Flower" and r.engine == theirs and r.rounds and not r.error), None)
    if mine is None or other is None:
        return None
    median = statistics.median(r.duration_s for r in mine.rounds) / statistics.median(
        r.duration_s for r in other.rounds
    )
    a, b = _reached(mine.rounds, target), _reached(other.rounds, target)
    to_target = f"**{a.elapsed_s / b.elapsed_s:.2f}x**" if a and b else "n/a (target not reached by both)"
    wall = mine.wall_s / other.wall_s if other.wall_s else float("nan")
    return (
        f"{ours.split(',')[0]} vs {theirs}: median round time **{median:.2f}x**, time to {target:.0%} {to_target}, "
        f"total wall {wall:.2f}x"
    )
