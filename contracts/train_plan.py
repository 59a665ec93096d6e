"""The plan a selected client trains a round with: built from the run's config by one function, carried
in RoundStarted.train as plain data, and decoded and validated once where the client receives it.

The plain shape is the one every event log written so far holds; change it only with a schema version.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from contracts.capability import ClientPlan
from contracts.checks import BUDGET_TOLERANCE, check_int
from contracts.config import PrivacyConfig, RoundConfig, RunConfig, upcast_task
from contracts.errors import CodecError, ConfigError
from contracts.strategy import FEDPROX, StrategyConfig

__all__ = ["BUDGET_TOLERANCE", "PlanPrivacy", "TrainPlan", "plan_for", "plan_privacy"]

_PLAN_KEYS = frozenset(
    {
        *("task", "partition", "seed", "rounds"),
        *("epochs", "batch_size", "lr", "momentum", "compression", "train_limit", "privacy", "proximal_mu"),
        "max_steps",
    }
)
_PRIVACY_KEYS = frozenset({"enabled", "epsilon", "delta", "max_grad_norm", "accountant"})
# RunConfig owns the ranges; these of its fields travel under another name.
_PLAN_NAME = {
    "round.local_epochs": "epochs",
    "round.batch_size": "batch_size",
    "round.lr": "lr",
    "round.momentum": "momentum",
    "strategy.mu": "proximal_mu",
}
FEDAVG_ONLY = StrategyConfig()


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanPrivacy:
    """Record-level DP-SGD at the client: its budget over the run and the clipping bound."""

    enabled: bool
    epsilon: float
    delta: float
    max_grad_norm: float
    accountant: str = "rdp"

    def exceeded_by(self, spent: float) -> bool:
        """Whether `spent` epsilon is past this budget (beyond the accountant's float noise): the client
        declines before it gets there, and the coordinator refuses an update that declares it."""
        return spent > self.epsilon * (1 + BUDGET_TOLERANCE)


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainPlan:
    """What a client does with a round: which task, how to train locally, how to send it back."""

    task: str
    # How a simulated client (one given a share, `--share I/N`, rather than data of its own) splits the global
    # data set: every such client computes the same split. Which share a client holds is its own setting.
    partition: str
    seed: int
    rounds: int  # the run's planned rounds: the noise multiplier is calibrated over them
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    compression: str
    train_limit: int | None
    privacy: PlanPrivacy
    proximal_mu: float = 0.0  # FedProx: each local step is pulled toward the round's model by this much
    max_steps: int | None = None  # a capability-aware plan's cap on the local steps (None: `epochs` whole)

    def adapted(self, plan: ClientPlan | None) -> TrainPlan:
        """This plan with one client's capability-aware local steps and codec (RoundStarted.plans)."""
        if plan is None:
            return self
        return dataclasses.replace(self, max_steps=plan.max_steps, compression=plan.compression)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for RoundStarted.train (`max_steps` only when set: the run's plan never sets it)."""
        privacy = self.privacy
        capped = {} if self.max_steps is None else {"max_steps": self.max_steps}
        return capped | {
            "task": self.task,
            "partition": self.partition,
            "seed": self.seed,
            "rounds": self.rounds,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "momentum": self.momentum,
            "compression": self.compression,
            "train_limit": self.train_limit,
            "proximal_mu": self.proximal_mu,
            "privacy": {
                "enabled": privacy.enabled,
                "epsilon": privacy.epsilon,
                "delta": privacy.delta,
                "max_grad_norm": privacy.max_grad_norm,
                "accountant": privacy.accountant,
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainPlan:
        """The plan in ``data``; CodecError naming the field (``train.<name>``) when a key is missing or
        unknown, or a value has the wrong type (bool is no number) or is outside what a RunConfig allows.
        A plan written before tasks (``model`` and ``dataset``) reads as the built-in task of that model, one
        written before strategies without a proximal term."""
        if not isinstance(data, Mapping):
            raise CodecError(f"train: must be a map, got {data!r:.100}")
        try:
            data = {"proximal_mu": 0.0, "max_steps": None, **upcast_task(dict(data))}
            data.pop("partition_count", None)  # written while the coordinator handed out shares
        except ConfigError as exc:
            raise CodecError(f"train.{exc.field}: {exc.message}") from exc
        train = _keys("train", data, _PLAN_KEYS)
        logged = train["privacy"]
        if isinstance(logged, Mapping):  # a plan written before accountants were chosen used RDP
            logged = {"accountant": "rdp", **logged}
        privacy = _keys("train.privacy", logged, _PRIVACY_KEYS)
        limit, steps = train["train_limit"], train["max_steps"]
        plan = cls(
            task=_text("task", train["task"]),
            partition=_text("partition", train["partition"]),
            seed=_integer("seed", train["seed"]),
            rounds=_integer("rounds", train["rounds"]),
            epochs=_integer("epochs", train["epochs"]),
            batch_size=_integer("batch_size", train["batch_size"]),
            lr=_number("lr", train["lr"]),
            momentum=_number("momentum", train["momentum"]),
            compression=_text("compression", train["compression"]),
            train_limit=None if limit is None else _integer("train_limit", limit, "an integer or null"),
            proximal_mu=_number("proximal_mu", train["proximal_mu"]),
            max_steps=None if steps is None else _integer("max_steps", steps, "an integer or null"),
            privacy=PlanPrivacy(
                enabled=_flag("privacy.enabled", privacy["enabled"]),
                epsilon=_number("privacy.epsilon", privacy["epsilon"]),
                delta=_number("privacy.delta", privacy["delta"]),
                max_grad_norm=_number("privacy.max_grad_norm", privacy["max_grad_norm"]),
                accountant=_text("privacy.accountant", privacy["accountant"]),
            ),
        )
        try:
            _check_ranges(plan)
        except ConfigError as exc:
            raise CodecError(f"train.{_PLAN_NAME.get(exc.field, exc.field)}: {exc.message}") from exc
        return plan


def plan_for(config: RunConfig) -> TrainPlan:
    """The plan every selected client of a round of ``config`` receives."""
    rules = config.round
    return TrainPlan(
        task=config.task,
        partition=config.partition,
        seed=config.seed,
        rounds=config.rounds,
        epochs=rules.local_epochs,
        batch_size=rules.batch_size,
        lr=rules.lr,
        momentum=rules.momentum,
        compression=config.compression,
        train_limit=config.train_limit,
        privacy=plan_privacy(config),
        proximal_mu=config.strategy.proximal_mu,
    )


def plan_privacy(config: RunConfig) -> PlanPrivacy:
    """The privacy part of ``config``'s plan: what each client is held to."""
    privacy = config.privacy
    return PlanPrivacy(
        enabled=privacy.enabled,
        epsilon=privacy.epsilon,
        delta=privacy.delta,
        max_grad_norm=privacy.max_grad_norm,
        accountant=privacy.accountant,
    )


def _check_ranges(plan: TrainPlan) -> None:
    """ConfigError unless some valid RunConfig has this plan (any client count: train_limit >= 1 here)."""
    privacy = plan.privacy
    if plan.max_steps is not None:
        check_int("max_steps", plan.max_steps, 1, 10_000_000)
    RunConfig(
        task=plan.task,
        partition=plan.partition,
        clients=1,
        seed=plan.seed,
        rounds=plan.rounds,
        compression=plan.compression,
        train_limit=plan.train_limit,
        privacy=PrivacyConfig(
            enabled=privacy.enabled,
            epsilon=privacy.epsilon,
            delta=privacy.delta,
            max_grad_norm=privacy.max_grad_norm,
            accountant=privacy.accountant,
        ),
        round=RoundConfig(local_epochs=plan.epochs, batch_size=plan.batch_size, lr=plan.lr, momentum=plan.momentum),
        strategy=StrategyConfig(name=FEDPROX, options={"mu": plan.proximal_mu}) if plan.proximal_mu else FEDAVG_ONLY,
    )


def _keys(name: str, data: Any, allowed: frozenset[str]) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise CodecError(f"{name}: must be a map, got {data!r:.100}")
    unknown = sorted(str(key) for key in data if key not in allowed)
    if unknown:
        raise CodecError(f"{name}.{unknown[0]:.100}: unknown field; allowed: {', '.join(sorted(allowed))}")
    missing = sorted(allowed - set(data))
    if missing:
        raise CodecError(f"{name}.{missing[0]}: missing")
    return data


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise CodecError(f"train.{name}: must be a string, got {value!r:.100}")
    return value


def _integer(name: str, value: Any, kind: str = "an integer") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CodecError(f"train.{name}: must be {kind}, got {value!r:.100}")
    return value


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CodecError(f"train.{name}: must be a number, got {value!r:.100}")
    try:
        return float(value)
    except OverflowError as exc:  # an int past 1e308
        raise CodecError(f"train.{name}: {value!r:.40} does not fit a float") from exc


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise CodecError(f"train.{name}: must be true or false, got {value!r:.100}")
    return value
