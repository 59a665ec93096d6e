"""`fedbus export RUN_ID --out FILE`: a run's latest aggregated model, read from any event log, as a file.

Formats: `npz` (named arrays plus a ``__meta__`` JSON entry, never pickle; no task needed), `pt` (a
`torch.save`d state dict of tensors only, for ``torch.load(weights_only=True)``) and `onnx` (when the
`onnx` package is installed; traced on a dummy input of the task's ``preprocessing["input_shape"]``); both
of the latter carry their metadata in a sidecar ``FILE.json`` and need the task to build its model.

The metadata of every format: run_id, model_version, model_digest, round, task, the task's preprocessing,
fedbus_version and a one-line `load` hint. `write_final_model` is how `fedbus run` and `fedbus up` leave
``<out>/model.npz``: the file `fedbus export RUN_ID --out model.npz` writes.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from contracts.config import RunConfig
from contracts.envelope import RecordedEvent
from contracts.errors import CodecError, ConfigError, FedbusError, NotFound, TransientError
from contracts.events import RoundAggregated
from contracts.ports import EventLog
from contracts.run_state import fold_run
from contracts.streams import run_stream
from ops.settings import PREFIX, VARIABLES
from ops.urls import shown

if TYPE_CHECKING:
    from torch import nn

    from fedbus import Task

FORMATS: Final = ("npz", "pt", "onnx")
SUFFIXES: Final = {".npz": "npz", ".pt": "pt", ".pth": "pt", ".onnx": "onnx"}
DATABASE_ENV: Final = f"{PREFIX}DATABASE_URL"
EMBEDDED_DB: Final = "fedbus.db"
_LOAD: Final = {
    "npz": "import numpy as np, torch, fedbus; a = np.load({file!r}); "
    "fedbus.load_task({task!r}).build_model(0).load_state_dict("
    "{{k: torch.from_numpy(a[k]) for k in a.files if k != '__meta__'}})",
    "pt": "import torch, fedbus; fedbus.load_task({task!r}).build_model(0).load_state_dict("
    "torch.load({file!r}, weights_only=True))",
    "onnx": "import onnxruntime; onnxruntime.InferenceSession({file!r}) "
    "(input 'input': a batch of preprocessing['input_shape'])",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class RunModel:
    """A run's latest model as its event log records it."""

    run_id: str
    config: RunConfig
    model_version: int
    model_digest: str
    round: int  # of the RoundAggregated that made it; 0 for the initial model
    blob: bytes  # the encoded tensors (contracts.tensor_codec)


def add_export_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", metavar="RUN_ID", help="the run whose latest aggregated model is written")
    parser.add_argument("--out", type=Path, required=True, metavar="FILE", help="the file to write")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        help="npz, pt or onnx (default: from the suffix of FILE: .npz, .pt/.pth, .onnx); pt and onnx build the task's "
        "model (a package.module:attribute task is imported from $FEDBUS_TASK_PATH), onnx needs the onnx package "
        "and the task's preprocessing['input_shape']",
    )
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help=f"the event log: postgresql://..., sqlite:///runs/latest/{EMBEDDED_DB} (an embedded run's), or simply "
        f"the path of a {EMBEDDED_DB} or of the --out folder holding it (default ${DATABASE_ENV}, else "
        f"{VARIABLES['DATABASE_URL'][0]})",
    )
    parser.add_argument(
        "--force", action="store_true", help="overwrite FILE even when it holds another run's model (or no export)"
    )


def export_command(args: argparse.Namespace) -> int:
    out: Path = args.out
    fmt = export_format(out, args.format)
    if fmt == "onnx":
        check_onnx()  # before reading anything: the environment cannot do it
    url = event_log_url(args.database_url)
    model = asyncio.run(read_run_model(url, args.run_id))
    if model is None or model.round == 0:
        detail = "only its initial model" if model is not None else "no model"
        raise FedbusError(f"run {args.run_id} has no aggregated model yet ({detail}) in the log at {_where(url)}")
    check_target(out, model.run_id, force=args.force)
    written = write_model(out, model, fmt)
    also = f" and {sidecar(out)}" if fmt != "npz" else ""
    print(
        f"wrote {written}{also}: run {model.run_id}, round {model.round}, model version {model.model_version}, "
        f"task {model.config.task}, {fmt}"
    )
    return 0


def write_final_model(database_url: str, run_id: str, path: Path) -> Path | None:
    """`fedbus run` / `fedbus up`: the run's latest model (the initial one when no round was aggregated) as
    the .npz `fedbus export` writes; None when the run has no model at all."""
    model = asyncio.run(read_run_model(database_url, run_id))
    return None if model is None else write_model(path, model, "npz")


def export_format(path: Path, given: str | None) -> str:
    if given is not None:
        return given
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError("format", f"cannot tell it from the suffix of {path.name!r}: pass --format npz, pt or onnx")
    return fmt


def check_onnx() -> None:
    if importlib.util.find_spec("onnx") is None:
        raise ConfigError(
            "format", "onnx export needs the Python package onnx, which is not installed here; use --format pt or npz"
        )


def event_log_url(given: str | None) -> str:
    """The event log's URL from --database-url, $FEDBUS_DATABASE_URL or the default; a path to a SQLite file
    (or to the folder holding an embedded run's fedbus.db) becomes its sqlite:/// URL. A SQLite file that
    does not exist is refused here: opening it would create an empty one."""
    url = given or os.environ.get(DATABASE_ENV) or VARIABLES["DATABASE_URL"][0]
    if "://" not in url:
        path = Path(url).expanduser()
        if path.is_dir() and (path / EMBEDDED_DB).is_file():
            path = path / EMBEDDED_DB
        if not path.is_file():
            raise ConfigError("database_url", f"{url!r:.200} is neither a database URL nor a SQLite file")
        return f"sqlite:///{path.resolve()}"
    scheme, _, rest = url.partition("://")
    if scheme.lower().startswith("sqlite"):
        file = rest.removeprefix("/").partition("?")[0]
        if file and file != ":memory:" and not Path(file).is_file():
            raise ConfigError("database_url", f"no SQLite event log at {file!r:.200}")
    return url


async def read_run_model(url: str, run_id: str) -> RunModel | None:
    """The latest model of `run_id` in the log at `url`; None when the run has none yet.

    NotFound when the log has no such run; FedbusError in one line when the log cannot be read."""
    from persistence.event_log_url import open_event_log  # here: `fedbus --help` does not import SQLAlchemy

    with _reading(url):
        log = await open_event_log(url, create=False)
    try:
        with _reading(url):
            events = await log.read_stream(run_stream(run_id))
        if not events:
            raise NotFound(f"run {run_id!r}: no such run in the log at {_where(url)}{await _known_runs(log, url)}")
        return await _latest(log, url, run_id, events)
    finally:
        await log.close()


async def _latest(log: EventLog, url: str, run_id: str, events: list[RecordedEvent]) -> RunModel | None:
    try:
        state = fold_run(events)
    except ValueError as exc:  # ConfigError included: a RunCreated whose config no longer reads
        raise FedbusError(f"run {run_id}: its events do not fold into a run: {exc}") from exc
    latest = state.latest_model
    if latest is None:
        return None
    version, digest = latest
    rounds = {e.model_version: e.round for e in (r.envelope.event for r in events) if isinstance(e, RoundAggregated)}
    try:
        with _reading(url):
            blob = await log.get_blob(digest)
    except NotFound:
        raise FedbusError(f"run {run_id}: model version {version} ({digest[:12]}) is not in the log's blobs") from None
    return RunModel(
        run_id=run_id,
        config=state.config,
        model_version=version,
        model_digest=digest,
        round=rounds.get(version, 0),
        blob=blob,
    )


async def _known_runs(log: EventLog, url: str) -> str:
    from persistence.sql_event_log import SqlEventLog

    if not isinstance(log, SqlEventLog):
        return ""
    with _reading(url):
        runs = [str(row["run_id"]) for row in await log.reads.runs()]
    if not runs:
        return " (it holds no runs)"
    return f" (newest runs: {', '.join(runs[:5])}{', ...' if len(runs) > 5 else ''})"


@contextmanager
def _reading(url: str) -> Iterator[None]:
    """Errors of the log's driver as one line naming the log: this is the CLI's edge."""
    try:
        yield
    except (ConfigError, NotFound):
        raise
    except TransientError as exc:
        raise FedbusError(f"cannot reach the event log at {_where(url)}: {_line(exc)}") from exc
    except Exception as exc:  # e.g. a file or database that is not a fedbus event log (no events table)
        raise FedbusError(f"cannot read the event log at {_where(url)}: {type(exc).__name__}: {_line(exc)}") from exc


def check_target(path: Path, run_id: str, *, force: bool) -> None:
    """ConfigError("out") when `path` (or its sidecar) exists and holds another run's model or no export."""
    if path.is_dir():
        raise ConfigError("out", f"{path} is a folder: name the file to write")
    if force:
        return
    for existing in (p for p in (path, sidecar(path)) if p.exists()):
        owner = _owner(existing)
        if owner != run_id:
            holds = f"the model of run {owner}" if owner else "no fedbus export"
            raise ConfigError("out", f"{existing} holds {holds}, not of run {run_id}; pass --force to overwrite it")


def _owner(path: Path) -> str | None:
    """The run_id in the metadata of an export at `path` (its own, or its sidecar's), else None."""
    from workers.learning.checkpoint import load_checkpoint

    meta: Any = None
    if path.suffix != ".json":
        try:
            meta = load_checkpoint(path)[1]
        except CodecError:
            path = sidecar(path)
    if meta is None:
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
    run_id = meta.get("run_id") if isinstance(meta, dict) else None
    return run_id if isinstance(run_id, str) else None


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def write_model(path: Path, model: RunModel, fmt: str) -> Path:
    """Write `model` to `path` as `fmt` with its metadata; the file's parent folders are made."""
    from contracts.tensor_codec import decode_tensors
    from workers.learning.checkpoint import save_checkpoint

    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "npz":
        preprocessing = _preprocessing(model.config.task)
        save_checkpoint(path, decode_tensors(model.blob), metadata_of(model, fmt, path, preprocessing))
        return path
    from fedbus import load_task

    task = load_task(model.config.task)
    meta = metadata_of(model, fmt, path, _plain(task.preprocessing))
    net = _model_of(task, model)
    partial = path.with_name(path.name + ".part")
    if fmt == "pt":
        import torch

        torch.save({name: tensor.detach().cpu().clone() for name, tensor in net.state_dict().items()}, partial)
    else:
        _onnx(task, net, partial)
    _write_json(sidecar(path), meta)
    os.replace(partial, path)
    return path


def metadata_of(model: RunModel, fmt: str, path: Path, preprocessing: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "format": fmt,
        "run_id": model.run_id,
        "model_version": model.model_version,
        "model_digest": model.model_digest,
        "round": model.round,
        "task": model.config.task,
        "preprocessing": preprocessing,
        "fedbus_version": fedbus_version(),
        "load": _LOAD[fmt].format(file=path.name, task=model.config.task),
    }


def fedbus_version() -> str:
    try:
        return metadata.version("fedbus")
    except metadata.PackageNotFoundError:  # a checkout run without `pip install`
        return "unknown"


def _preprocessing(task_ref: str) -> dict[str, Any] | None:
    """The task's preprocessing when the task loads here; an .npz is written without it otherwise."""
    from fedbus import TaskError, load_task

    try:
        return _plain(load_task(task_ref).preprocessing)
    except TaskError:
        return None


def _plain(preprocessing: Mapping[str, Any]) -> dict[str, Any]:
    plain: dict[str, Any] = json.loads(json.dumps(dict(preprocessing), default=str))
    return plain


def _model_of(task: Task, model: RunModel) -> nn.Module:
    """The task's model holding the run's weights; TaskError when they do not fit it."""
    import numpy as np
    import torch

    from contracts.tensor_codec import decode_tensors
    from fedbus import TaskError

    net = task.build_model(model.config.seed)
    weights = {name: torch.from_numpy(np.array(array)) for name, array in decode_tensors(model.blob).items()}
    try:
        net.load_state_dict(weights)
    except RuntimeError as exc:
        raise TaskError(f"task {task.name}: the run's weights do not fit its model: {_line(exc)}") from exc
    return net.eval()


def _onnx(task: Task, net: nn.Module, partial: Path) -> None:
    import torch

    shape = task.preprocessing.get("input_shape")
    if not isinstance(shape, list | tuple) or not shape or not all(isinstance(n, int) and n > 0 for n in shape):
        raise ConfigError(
            "format", f"task {task.name} gives no preprocessing['input_shape'] for onnx's dummy input; use pt or npz"
        )
    dynamo = importlib.util.find_spec("onnxscript") is not None  # the new exporter; else the TorchScript one
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net,
                (torch.zeros((1, *shape)),),
                str(partial),
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                dynamo=dynamo,
                external_data=False,
            )
    except Exception as exc:  # the exporter's own failures: one line, not its traceback
        partial.unlink(missing_ok=True)
        raise FedbusError(f"onnx export of task {task.name} failed: {type(exc).__name__}: {_line(exc)}") from exc


def _write_json(path: Path, meta: dict[str, Any]) -> None:
    partial = path.with_name(path.name + ".part")
    partial.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    os.replace(partial, path)


def _where(url: str) -> str:
    return url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else shown(url)


def _line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


__all__ = [
    "FORMATS",
    "RunModel",
    "add_export_options",
    "check_target",
    "event_log_url",
    "export_command",
    "read_run_model",
    "write_final_model",
    "write_model",
]
