"""`fedbus export`: a run's latest aggregated model out of its event log, and the model.npz `fedbus run` leaves.

One tiny embedded run (SQLite, a subprocess like tests/integration/test_embedded_run.py) is exported as .npz
and .pt and compared with its model.npz; the refusals (another run's file, an unknown run, no aggregated
model, an unreachable database, onnx without the onnx package) are one line and exit 2. The same run's
events copied into a fresh PostgreSQL database export the same weights (marked integration: skipped when
PostgreSQL is unreachable unless FEDBUS_REQUIRE_SERVICES=1). Most exports call `main` in-process (no torch
import per call); the exit status and the one line are main's, as in the subprocess.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from contracts.config import RunConfig
from contracts.envelope import Envelope
from contracts.events import ModelInitialized, RunCreated
from contracts.streams import run_stream
from contracts.tensor_codec import encode_tensors, sha256_hex
from fedbus import load_task
from persistence.sql_event_log import SqlEventLog
from services.cli import main as cli
from workers.learning.checkpoint import load_checkpoint, save_checkpoint

DATA = os.environ.get("FEDBUS_DATA_DIR", str(Path(__file__).resolve().parents[3] / "shared" / "datasets"))
TASK = "mnist_dp_cnn"
Export = Callable[..., tuple[int, str, str]]


def fedbus(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FEDBUS_DATA_DIR": DATA, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


@dataclass(frozen=True)
class Embedded:
    out: Path
    run_id: str

    @property
    def database(self) -> Path:
        return self.out / "fedbus.db"

    def model(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return load_checkpoint(self.out / "model.npz")


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Embedded:
    out = tmp_path_factory.mktemp("export") / "run"
    done = fedbus(
        "run", "--rounds", "1", "--clients", "2", "--train-limit", "400", "--eval-limit", "200", "--out", str(out)
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return Embedded(out=out, run_id=json.loads((out / "summary.json").read_text())["run_id"])


@pytest.fixture
def export(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Export:
    """`fedbus export ARGS` in this process: (exit status, stdout, stderr)."""
    monkeypatch.setattr(cli, "configure_logging", lambda *_, **__: None)  # leave pytest's logging alone

    def call(*args: str | Path) -> tuple[int, str, str]:
        code = cli.main(["export", *map(str, args)])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return call


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_the_run_leaves_model_npz_with_the_export_metadata(embedded: Embedded) -> None:
    weights, meta = embedded.model()

    assert meta["run_id"] == embedded.run_id and meta["format"] == "npz"
    assert meta["round"] == 1 and meta["model_version"] >= 1
    assert meta["model_digest"] == sha256_hex(encode_tensors(weights))  # the run's model, byte for byte
    assert meta["task"] == TASK and meta["preprocessing"] == json.loads(json.dumps(load_task(TASK).preprocessing))
    assert meta["preprocessing"]["input_shape"] == [1, 28, 28]
    assert meta["fedbus_version"] == metadata.version("fedbus")
    assert f"load_task('{TASK}')" in meta["load"] and "\n" not in meta["load"]


@pytest.mark.parametrize("where", ["file", "folder", "url"])
def test_npz_export_from_the_sqlite_log_is_the_runs_model_npz(
    embedded: Embedded, export: Export, tmp_path: Path, where: str
) -> None:
    database = {"file": str(embedded.database), "folder": str(embedded.out), "url": f"sqlite:///{embedded.database}"}
    target = tmp_path / "exported.npz"

    code, out, err = export(embedded.run_id, "--out", target, "--database-url", database[where])

    assert code == 0, err
    assert str(target) in out and embedded.run_id in out
    weights, meta = load_checkpoint(target)
    expected, expected_meta = embedded.model()
    assert weights.keys() == expected.keys() and all(np.array_equal(weights[k], expected[k]) for k in expected)
    assert {k: v for k, v in meta.items() if k != "load"} == {k: v for k, v in expected_meta.items() if k != "load"}
    assert "'exported.npz'" in meta["load"]


def test_the_npz_load_hint_loads_it_into_the_tasks_model(
    embedded: Embedded, export: Export, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert export(embedded.run_id, "--out", tmp_path / "m.npz", "--database-url", embedded.database)[0] == 0
    monkeypatch.chdir(tmp_path)

    exec(load_checkpoint("m.npz")[1]["load"], {})  # raises if the state dict does not fit the model


def test_pt_export_loads_with_weights_only_into_the_tasks_model(
    embedded: Embedded, export: Export, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "model.pt"

    code, _, err = export(embedded.run_id, "--out", target, "--database-url", embedded.database)

    assert code == 0, err
    state = torch.load(target, weights_only=True)
    model = load_task(TASK).build_model(0)
    model.load_state_dict(state)  # strict: every key, every shape
    expected, expected_meta = embedded.model()
    assert set(state) == set(expected)
    assert all(np.array_equal(model.state_dict()[k].numpy(), expected[k]) for k in expected)
    meta = json.loads((tmp_path / "model.pt.json").read_text())
    assert meta["format"] == "pt" and "weights_only=True" in meta["load"] and "'model.pt'" in meta["load"]
    for key in ("run_id", "model_version", "model_digest", "round", "task", "preprocessing", "fedbus_version"):
        assert meta[key] == expected_meta[key], key
    monkeypatch.chdir(tmp_path)
    exec(meta["load"], {})


def test_the_format_comes_from_the_suffix_or_from_format(embedded: Embedded, export: Export, tmp_path: Path) -> None:
    target = tmp_path / "model.bin"

    code, _, err = export(embedded.run_id, "--out", target, "--database-url", embedded.database)
    assert code == 2 and "--format" in one_line(err) and not target.exists()

    assert export(embedded.run_id, "--out", target, "--format", "npz", "--database-url", embedded.database)[0] == 0
    assert load_checkpoint(target)[1]["run_id"] == embedded.run_id


def test_another_runs_file_is_kept_unless_force(embedded: Embedded, export: Export, tmp_path: Path) -> None:
    target = tmp_path / "model.npz"
    save_checkpoint(target, {"w": np.zeros(3, np.float32)}, {"run_id": "run-someone-else"})
    args = (embedded.run_id, "--out", target, "--database-url", embedded.database)

    code, _, err = export(*args)
    line = one_line(err)
    assert code == 2 and "run-someone-else" in line and "--force" in line
    assert load_checkpoint(target)[1]["run_id"] == "run-someone-else"

    assert export(*args, "--force")[0] == 0
    assert load_checkpoint(target)[1]["run_id"] == embedded.run_id
    assert export(*args)[0] == 0  # the same run's export again: fine


def test_a_file_that_is_no_export_is_kept_unless_force(embedded: Embedded, export: Export, tmp_path: Path) -> None:
    target = tmp_path / "notes.pt"
    target.write_text("precious")

    code, _, err = export(embedded.run_id, "--out", target, "--database-url", embedded.database)

    assert code == 2 and "no fedbus export" in one_line(err) and target.read_text() == "precious"
    assert export(embedded.run_id, "--out", target, "--database-url", embedded.database, "--force")[0] == 0
    assert json.loads((tmp_path / "notes.pt.json").read_text())["run_id"] == embedded.run_id


def test_an_unknown_run_is_one_line_exit_2_naming_the_runs_there(embedded: Embedded, tmp_path: Path) -> None:
    done = fedbus("export", "run-nope", "--out", str(tmp_path / "m.npz"), "--database-url", str(embedded.database))

    line = one_line(done.stderr)
    assert done.returncode == 2 and "run-nope" in line and embedded.run_id in line
    assert not (tmp_path / "m.npz").exists()


def test_a_run_without_an_aggregated_model_is_one_line_exit_2(export: Export, tmp_path: Path) -> None:
    database = tmp_path / "fedbus.db"
    blob = encode_tensors({"w": np.zeros(2, np.float32)})

    async def seed() -> None:
        log = await SqlEventLog.connect(f"sqlite:///{database}")
        try:
            await log.put_blob(sha256_hex(blob), "model", blob)
            config = RunConfig().to_dict()
            await log.append(run_stream("run-fresh"), [Envelope(event=RunCreated(run_id="run-fresh", config=config))])
            await log.append(run_stream("run-init"), [Envelope(event=RunCreated(run_id="run-init", config=config))])
            initialized = ModelInitialized(
                run_id="run-init", model_version=0, model_digest=sha256_hex(blob), num_parameters=2
            )
            await log.append(run_stream("run-init"), [Envelope(event=initialized)])
        finally:
            await log.close()

    asyncio.run(seed())
    for run_id in ("run-fresh", "run-init"):
        code, _, err = export(run_id, "--out", tmp_path / "m.npz", "--database-url", database)
        assert code == 2 and "no aggregated model yet" in one_line(err) and run_id in err
    assert not (tmp_path / "m.npz").exists()


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("postgresql://root:pw@127.0.0.1:1/fedbus", "cannot reach"),
        ("sqlite:///{tmp}/missing.db", "no SQLite event log"),
        ("{tmp}/missing.db", "neither a database URL nor a SQLite file"),
        ("{tmp}/junk.db", "cannot read the event log"),
    ],
)
def test_a_database_that_cannot_be_read_is_one_line_exit_2(export: Export, tmp_path: Path, url: str, said: str) -> None:
    (tmp_path / "junk.db").write_text("not a database")

    code, _, err = export("run-x", "--out", tmp_path / "m.npz", "--database-url", url.format(tmp=tmp_path))

    line = one_line(err)
    assert code == 2 and said in line and "pw" not in line
    assert not (tmp_path / "missing.db").exists()  # never created by looking


def test_onnx_is_refused_without_the_onnx_package_or_exported_with_it(
    embedded: Embedded, export: Export, tmp_path: Path
) -> None:
    target = tmp_path / "model.onnx"

    code, _, err = export(embedded.run_id, "--out", target, "--database-url", embedded.database)

    if importlib.util.find_spec("onnx") is None:
        line = one_line(err)
        assert code == 2 and "onnx" in line and "not installed" in line
        assert not target.exists() and not (tmp_path / "model.onnx.json").exists()
    else:
        assert code == 0, err
        assert target.stat().st_size > 0
        assert json.loads((tmp_path / "model.onnx.json").read_text())["run_id"] == embedded.run_id


@pytest.mark.integration
def test_export_from_postgresql_holding_the_runs_events(
    embedded: Embedded, export: Export, tmp_path: Path, postgres_url: str
) -> None:
    expected, expected_meta = embedded.model()

    async def copy() -> None:
        source = await SqlEventLog.connect(f"sqlite:///{embedded.database}", create=False)
        target = await SqlEventLog.connect(postgres_url)
        try:
            events = await source.read_stream(run_stream(embedded.run_id))
            await target.append(run_stream(embedded.run_id), [r.envelope for r in events], expected_version=0)
            digest = expected_meta["model_digest"]
            await target.put_blob(digest, "model", await source.get_blob(digest))
        finally:
            await source.close()
            await target.close()

    asyncio.run(copy())
    target = tmp_path / "from-postgres.npz"

    code, _, err = export(embedded.run_id, "--out", target, "--database-url", postgres_url)

    assert code == 0, err
    weights, meta = load_checkpoint(target)
    assert all(np.array_equal(weights[k], expected[k]) for k in expected) and weights.keys() == expected.keys()
    assert meta["run_id"] == embedded.run_id and meta["model_digest"] == expected_meta["model_digest"]
    assert meta["round"] == expected_meta["round"] == 1
