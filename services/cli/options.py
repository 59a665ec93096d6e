"""Options of `fedbus run` (and `fedbus up`): flags over a TOML file over defaults, validated into a RunConfig."""

from __future__ import annotations

import argparse
import json
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from contracts.catalog import AGGREGATORS, BUILTIN_TASKS
from contracts.config import RunConfig
from contracts.errors import CodecError, ConfigError
from contracts.strategy import STRATEGIES
from contracts.tensors import TensorDict
from ops.settings import add_task_path

# flag dest -> (section or None, key in RunConfig.from_dict)
FLAG_FIELDS: dict[str, tuple[str | None, str]] = {
    "task": (None, "task"),
    "clients": (None, "clients"),
    "rounds": (None, "rounds"),
    "partition": (None, "partition"),
    "compression": (None, "compression"),
    "seed": (None, "seed"),
    "target_accuracy": (None, "target_accuracy"),
    "patience": (None, "patience"),
    "train_limit": (None, "train_limit"),
    "eval_limit": (None, "eval_limit"),
    "epsilon": ("privacy", "epsilon"),
    "delta": ("privacy", "delta"),
    "max_grad_norm": ("privacy", "max_grad_norm"),
    "accountant": ("privacy", "accountant"),
    "quorum": ("round", "quorum"),
    "round_timeout": ("round", "timeout_s"),
    "grace": ("round", "grace_s"),
    "clients_per_round": ("round", "clients_per_round"),
    "local_epochs": ("round", "local_epochs"),
    "batch_size": ("round", "batch_size"),
    "lr": ("round", "lr"),
    "momentum": ("round", "momentum"),
    "aggregator": ("round", "aggregator"),
    "strategy": ("strategy", "name"),
}


def _choices(names: Iterable[str]) -> str:
    *first, last = names
    return f"{', '.join(first)} or {last}"


def add_run_options(parser: argparse.ArgumentParser) -> None:
    defaults = RunConfig()
    add = parser.add_argument
    add("--config", type=Path, help="a TOML file of options (flags override it)")
    add(
        "--task",
        help=f"what to federate: {_choices(BUILTIN_TASKS)}, another name registered under the entry points "
        f"fedbus.tasks, or package.module:attribute (default {defaults.task})",
    )
    add("--clients", type=int, help="number of clients (default 10)")
    add("--rounds", type=int, help="the round limit (default 20)")
    add("--partition", help="iid, dirichlet:<alpha> or shards:<k> (default iid)")
    add("--epsilon", type=float, help="target epsilon per client over the run (default 3)")
    add("--delta", type=float, help="target delta (default 1e-5)")
    add("--no-dp", action="store_true", help="train without differential privacy")
    add(
        "--user-dp",
        action="store_true",
        help="user-level DP-FedAvg at the aggregator too (its options in the TOML's [run.user_privacy] table)",
    )
    add("--max-grad-norm", type=float, help="per-sample clipping bound (default 1.0)")
    add("--accountant", help="rdp (default) or prv (tighter: less noise for the same budget)")
    add("--compression", help="fp32, fp16, int8, topk:<f>[+int8|+fp16] (default int8)")
    add("--quorum", type=float, help="fraction of selected clients that closes a round (default 0.8)")
    add("--round-timeout", type=float, help="seconds before a round's deadline (default 120)")
    add("--grace", type=float, help="seconds to wait for stragglers after the quorum (default 0)")
    add("--clients-per-round", type=float, help="fraction of clients selected per round (default 1.0)")
    add("--local-epochs", type=int, help="local epochs per round (default 1)")
    add("--batch-size", type=int, help="expected local batch size (default 64)")
    add("--lr", type=float, help="local learning rate (default 0.1)")
    add("--momentum", type=float, help="local SGD momentum (default 0)")
    add("--aggregator", help=f"how updates are combined: {_choices(AGGREGATORS)} (default {defaults.round.aggregator})")
    add(
        "--strategy",
        help=f"the server step: {_choices(STRATEGIES)} (default {defaults.strategy.name}); its options in the "
        "TOML's [run.strategy] table",
    )
    add("--target-accuracy", type=float, help="stop once the test accuracy reaches this (0-1)")
    add("--patience", type=int, help="stop after this many rounds without improvement (0: off)")
    add("--train-limit", type=int, help="use only the first N training samples (quick runs)")
    add("--eval-limit", type=int, help="evaluate on the first N test samples")
    add("--seed", type=int, help="seed of the model, partition and selection (default 0)")


def config_from(args: argparse.Namespace) -> RunConfig:
    """Defaults, then the TOML file, then flags; ConfigError names the offending field. The file's
    ``client_data`` becomes `args.client_data` when the command has --client-data and it was not given."""
    data: dict[str, Any] = {}
    if args.config is not None:
        data, client_data = _read_toml(args.config)
        add_task_path(args.config.resolve().parent)  # a task module next to its fedbus.toml is found
        if client_data is not None and hasattr(args, "client_data") and args.client_data is None:
            args.client_data = client_data  # the flag --client-data overrides the file's client_data
    for table in ("privacy", "round", "strategy"):
        data.setdefault(table, {})
    for dest, (section, key) in FLAG_FIELDS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if section is None:
            data[key] = value
        else:
            if not isinstance(data[section], dict):
                raise ConfigError(section, "must be a table of options")
            data[section][key] = value
    if getattr(args, "no_dp", False):
        data["privacy"]["enabled"] = False
    if getattr(args, "user_dp", False):
        user = data.setdefault("user_privacy", {})
        if not isinstance(user, dict):
            raise ConfigError("user_privacy", "must be a table of options")
        user["enabled"] = True
    return RunConfig.from_dict(data)


def _read_toml(path: Path) -> tuple[dict[str, Any], Path | None]:
    """A TOML file, or JSON when the name ends in .json (what `fedbus up` hands its coordinator): the run's
    options, and the folder of client data folders its ``client_data`` names (top level or in [run],
    relative to the file's folder; what --client-data says), which is no run option: None when absent."""
    try:
        with path.open("rb") as f:
            data = json.load(f) if path.suffix == ".json" else tomllib.load(f)
    except FileNotFoundError as exc:
        raise ConfigError("config", f"no such file: {path}") from exc
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError("config", f"{path} is not valid {path.suffix.lstrip('.') or 'TOML'}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError("config", f"{path} must hold a table of options")
    run = data.get("run", data)
    if not isinstance(run, dict):
        raise ConfigError("config", "the [run] section must be a table")
    tables = [data] if run is data else [data, run]
    found = [table.pop("client_data") for table in tables if "client_data" in table]
    if len(found) > 1:
        raise ConfigError("client_data", "is set both at the top level and in [run]: keep one")
    if not found:
        return dict(run), None
    if not isinstance(found[0], str) or not found[0].strip():
        raise ConfigError("client_data", f"must be a folder path (a string), got {found[0]!r:.100}")
    return dict(run), path.resolve().parent / Path(found[0]).expanduser()


def add_init_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--init-from",
        type=Path,
        metavar="FILE",
        help="start from this model (a model.npz of fedbus run, fedbus up or fedbus export) instead of the "
        "task's seeded weights",
    )


def initial_weights_from(path: Path | None) -> TensorDict | None:
    """The weights of the checkpoint at `path` (None for None); ConfigError("init_from") when it is not one."""
    if path is None:
        return None
    from workers.learning.checkpoint import load_checkpoint

    try:
        weights, _ = load_checkpoint(path)
    except CodecError as exc:
        raise ConfigError("init_from", str(exc)) from None
    return weights


def add_client_data_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--client-data",
        type=Path,
        help="a folder of one data folder per client (sorted; client i gets the i-th); default: each client "
        "simulates its partition of the task's data set",
    )


def client_folders(root: Path | None, clients: int) -> list[Path] | None:
    """The data folders of `clients` simulated clients: the first `clients` subfolders of `root` in sorted
    order (client i gets the i-th); None when `root` is None (clients simulate a partition instead)."""
    if root is None:
        return None
    if not root.is_dir():
        raise ConfigError("client_data", f"{root} is not a folder")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if len(folders) < clients:
        raise ConfigError("client_data", f"{root} has {len(folders)} client folders for {clients} clients")
    return folders[:clients]
