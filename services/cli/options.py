"""Options of `fedbus run` (and `fedbus up`): flags over a TOML file over defaults, validated into a RunConfig."""

from __future__ import annotations

import argparse
import json
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from contracts.catalog import AGGREGATORS, DATASETS, MODELS
from contracts.config import RunConfig
from contracts.errors import ConfigError

# flag dest -> (section or None, key in RunConfig.from_dict)
FLAG_FIELDS: dict[str, tuple[str | None, str]] = {
    "dataset": (None, "dataset"),
    "model": (None, "model"),
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
    "quorum": ("round", "quorum"),
    "round_timeout": ("round", "timeout_s"),
    "grace": ("round", "grace_s"),
    "clients_per_round": ("round", "clients_per_round"),
    "local_epochs": ("round", "local_epochs"),
    "batch_size": ("round", "batch_size"),
    "lr": ("round", "lr"),
    "momentum": ("round", "momentum"),
    "aggregator": ("round", "aggregator"),
}


def _choices(names: Iterable[str]) -> str:
    *first, last = names
    return f"{', '.join(first)} or {last}"


def add_run_options(parser: argparse.ArgumentParser) -> None:
    defaults = RunConfig()
    add = parser.add_argument
    add("--config", type=Path, help="a TOML file of options (flags override it)")
    add("--dataset", help=f"{_choices(DATASETS)} (default {defaults.dataset})")
    add("--model", help=f"{_choices(MODELS)}, one shaped for --dataset (default {defaults.model})")
    add("--clients", type=int, help="number of clients (default 10)")
    add("--rounds", type=int, help="the round limit (default 20)")
    add("--partition", help="iid, dirichlet:<alpha> or shards:<k> (default iid)")
    add("--epsilon", type=float, help="target epsilon per client over the run (default 3)")
    add("--delta", type=float, help="target delta (default 1e-5)")
    add("--no-dp", action="store_true", help="train without differential privacy")
    add("--max-grad-norm", type=float, help="per-sample clipping bound (default 1.0)")
    add("--compression", help="fp32, fp16, int8, topk:<f>[+int8|+fp16] (default int8)")
    add("--quorum", type=float, help="fraction of selected clients that closes a round (default 0.8)")
    add("--round-timeout", type=float, help="seconds before a round's deadline (default 120)")
    add("--grace", type=float, help="seconds to wait for stragglers after the quorum (default 0)")
    add("--clients-per-round", type=float, help="fraction of clients selected per round (default 1.0)")
    add("--local-epochs", type=int, help="local epochs per round (default 1)")
    add("--batch-size", type=int, help="expected local batch size (default 64)")
    add("--lr", type=float, help="local learning rate (default 0.1)")
    add("--momentum", type=float, help="local SGD momentum (default 0)")
    add("--aggregator", help=f"{_choices(AGGREGATORS)} (default {defaults.round.aggregator})")
    add("--target-accuracy", type=float, help="stop once the test accuracy reaches this (0-1)")
    add("--patience", type=int, help="stop after this many rounds without improvement (0: off)")
    add("--train-limit", type=int, help="use only the first N training samples (quick runs)")
    add("--eval-limit", type=int, help="evaluate on the first N test samples")
    add("--seed", type=int, help="seed of the model, partition and selection (default 0)")


def config_from(args: argparse.Namespace) -> RunConfig:
    """Defaults, then the TOML file, then flags; ConfigError names the offending field."""
    data: dict[str, Any] = {}
    if args.config is not None:
        data = _read_toml(args.config)
    data.setdefault("privacy", {})
    data.setdefault("round", {})
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
    return RunConfig.from_dict(data)


def _read_toml(path: Path) -> dict[str, Any]:
    """A TOML file, or JSON when the name ends in .json (what `fedbus up` hands its coordinator)."""
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
    return dict(run)
