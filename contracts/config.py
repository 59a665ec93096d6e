"""Run configuration: validated once, where options become objects; errors name the field and the range."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Final

from contracts.capability import PlansConfig
from contracts.catalog import AGGREGATORS, FEDAVG, KRUM, MNIST_DP_CNN, MODELS, check_task_ref
from contracts.checks import check_int, check_range
from contracts.compression import parse_compression
from contracts.errors import ConfigError
from contracts.strategy import StrategyConfig
from contracts.user_privacy import UserPrivacyConfig

# The partition schemes fedbus/partition.py splits by, with ASCII digits only: what this accepts,
# the learning code accepts too (it also strips blanks and takes other digits; the contract is stricter).
PARTITION_PATTERN: Final = r"iid|dirichlet:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?|shards:[0-9]{1,6}"
PARTITIONS_ALLOWED: Final = "iid, dirichlet:<alpha>, shards:<k>"
MAX_DIRICHLET_ALPHA: Final = 1e6
MAX_SHARDS_PER_CLIENT: Final = 100_000
ACCOUNTANTS: Final = ("rdp", "prv")


def check_partition(scheme: str) -> None:
    """ConfigError("partition", ...) unless `scheme` is iid, dirichlet:<alpha> with alpha in
    (0, MAX_DIRICHLET_ALPHA] or shards:<k> with k in [1, MAX_SHARDS_PER_CLIENT] (PARTITION_PATTERN)."""
    kind, _, arg = scheme.partition(":")
    spelled = re.fullmatch(PARTITION_PATTERN, scheme) is not None
    if kind == "dirichlet" and not (spelled and 0 < float(arg) <= MAX_DIRICHLET_ALPHA):
        detail = f"alpha must be a number in (0, {MAX_DIRICHLET_ALPHA:g}]; allowed: {PARTITIONS_ALLOWED}"
        raise ConfigError("partition", f"{scheme!r:.100}: {detail}")
    if kind == "shards" and not (spelled and 1 <= int(arg) <= MAX_SHARDS_PER_CLIENT):
        detail = f"k must be an integer in [1, {MAX_SHARDS_PER_CLIENT}]; allowed: {PARTITIONS_ALLOWED}"
        raise ConfigError("partition", f"{scheme!r:.100}: {detail}")
    if not spelled:
        raise ConfigError("partition", f"unknown scheme {scheme!r:.100}; allowed: {PARTITIONS_ALLOWED}")


@dataclass(frozen=True, slots=True, kw_only=True)
class PrivacyConfig:
    """Record-level DP-SGD at each client: a target (epsilon, delta) over the planned rounds."""

    enabled: bool = True
    epsilon: float = 3.0
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    accountant: str = "rdp"  # rdp | prv: calibration, the clients' ledgers and their budget checks use it

    def __post_init__(self) -> None:
        if self.accountant not in ACCOUNTANTS:
            allowed = ", ".join(ACCOUNTANTS)
            raise ConfigError("privacy.accountant", f"must be one of {allowed}, got {self.accountant!r:.100}")
        if self.enabled:
            check_range("privacy.epsilon", self.epsilon, 0.0, 1000.0, low_open=True)
            check_range("privacy.delta", self.delta, 0.0, 0.1, low_open=True)
        check_range("privacy.max_grad_norm", self.max_grad_norm, 0.0, 1e6, low_open=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundConfig:
    """How one round runs: who is selected, when it closes, and what each client does locally."""

    clients_per_round: float = 1.0  # a fraction of eligible clients, (0, 1]
    quorum: float = 0.8  # a fraction of the selected clients, (0, 1]
    min_updates: int = 1
    timeout_s: float = 120.0
    grace_s: float = 0.0
    aggregation_timeout_s: float = 600.0  # from QuorumReached to RoundAggregated; past it the round fails
    max_attempts: int = 3
    local_epochs: int = 1
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.0
    max_update_norm: float | None = None  # an absolute bound on an update's L2 norm
    # ... and one relative to the model it updates: at most this times the model's norm (at least 1). A real
    # round moves a model by a fraction of its norm; an update past this is a bug or an attack.
    max_update_norm_ratio: float | None = 10.0
    max_update_bytes: int = 256 << 20
    aggregator: str = FEDAVG  # one of AGGREGATORS; all but fedavg hold every update in memory
    byzantine_f: int = 0  # Byzantine clients Krum tolerates
    trim_fraction: float = 0.1  # trimmed_mean drops this fraction at each end, [0, 0.5)
    clip_norm: float | None = None  # scale each update to this L2 norm at most before aggregating
    max_sample_weight: int | None = None  # fedavg caps each client's num_samples weight at this

    def __post_init__(self) -> None:
        check_range("round.clients_per_round", self.clients_per_round, 0.0, 1.0, low_open=True)
        check_range("round.quorum", self.quorum, 0.0, 1.0, low_open=True)
        check_int("round.min_updates", self.min_updates, 1, 100_000)
        check_range("round.timeout_s", self.timeout_s, 0.0, 86_400.0, low_open=True)
        check_range("round.grace_s", self.grace_s, 0.0, 3_600.0)
        check_range("round.aggregation_timeout_s", self.aggregation_timeout_s, 0.0, 86_400.0, low_open=True)
        check_int("round.max_attempts", self.max_attempts, 1, 100)
        check_int("round.local_epochs", self.local_epochs, 1, 1000)
        check_int("round.batch_size", self.batch_size, 1, 65_536)
        check_range("round.lr", self.lr, 0.0, 100.0, low_open=True)
        check_range("round.momentum", self.momentum, 0.0, 0.999)
        if self.max_update_norm is not None:
            check_range("round.max_update_norm", self.max_update_norm, 0.0, 1e9, low_open=True)
        if self.max_update_norm_ratio is not None:
            check_range("round.max_update_norm_ratio", self.max_update_norm_ratio, 0.0, 1e6, low_open=True)
        check_int("round.max_update_bytes", self.max_update_bytes, 1024, 4 << 30)
        self._check_aggregation()

    def _check_aggregation(self) -> None:
        if self.aggregator not in AGGREGATORS:
            allowed = ", ".join(AGGREGATORS)
            raise ConfigError("round.aggregator", f"unknown aggregator {self.aggregator!r:.100}; allowed: {allowed}")
        check_int("round.byzantine_f", self.byzantine_f, 0, 100_000)
        check_range("round.trim_fraction", self.trim_fraction, 0.0, 0.5)
        if self.trim_fraction >= 0.5:
            raise ConfigError("round.trim_fraction", f"must be in [0, 0.5), got {self.trim_fraction!r}")
        if self.clip_norm is not None:
            check_range("round.clip_norm", self.clip_norm, 0.0, 1e9, low_open=True)
        if self.max_sample_weight is not None:
            check_int("round.max_sample_weight", self.max_sample_weight, 1, 10_000_000)
        if self.aggregator == KRUM and self.min_updates < 2 * self.byzantine_f + 3:
            needed, f = 2 * self.byzantine_f + 3, self.byzantine_f
            detail = f"must be >= 2 * byzantine_f + 3 = {needed} for krum with byzantine_f={f}, got {self.min_updates}"
            raise ConfigError("round.min_updates", detail)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunConfig:
    """Everything a run needs; its dict form travels in RunCreated and RoundStarted.

    `task` names what is federated: a built-in (`mnist_dp_cnn`, ...), another name registered under the
    entry-point group ``fedbus.tasks``, or ``package.module:attribute``. `partition` and `train_limit`
    shape the simulated clients of `fedbus run` / `fedbus up` (clients without data of their own).
    `init_model` is the sha256 of a model blob in the log the run starts from instead of the task's
    seeded weights (`fedbus run --init-from FILE` puts it there).
    """

    task: str = MNIST_DP_CNN
    clients: int = 10
    rounds: int = 20
    partition: str = "iid"
    compression: str = "int8"
    seed: int = 0
    target_accuracy: float | None = None
    patience: int = 0
    min_delta: float = 0.0
    eval_limit: int | None = None
    train_limit: int | None = None
    init_model: str | None = None
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    round: RoundConfig = field(default_factory=RoundConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    user_privacy: UserPrivacyConfig = field(default_factory=UserPrivacyConfig)
    plans: PlansConfig = field(default_factory=PlansConfig)

    def __post_init__(self) -> None:
        if self.init_model is not None and not (
            isinstance(self.init_model, str) and re.fullmatch(r"[0-9a-f]{64}", self.init_model)
        ):
            raise ConfigError(
                "init_model", f"must be the sha256 (64 hex digits) of a model blob, got {self.init_model!r:.100}"
            )
        for name in ("task", "partition", "compression"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(name, f"must be a string, got {getattr(self, name)!r:.100}")
        check_task_ref(self.task)
        check_partition(self.partition)
        parse_compression(self.compression)
        check_int("clients", self.clients, 1, 100_000)
        check_int("rounds", self.rounds, 1, 100_000)
        check_int("seed", self.seed, 0, 2**31 - 1)
        if self.target_accuracy is not None:
            check_range("target_accuracy", self.target_accuracy, 0.0, 1.0, low_open=True)
        check_int("patience", self.patience, 0, 100_000)
        check_range("min_delta", self.min_delta, 0.0, 1.0)
        if self.eval_limit is not None:
            check_int("eval_limit", self.eval_limit, 1, 10_000_000)
        if self.train_limit is not None:
            check_int("train_limit", self.train_limit, self.clients, 10_000_000)
        rules = self.round
        if self.strategy.asynchronous and self.user_privacy.enabled:
            detail = "fedbuff's buffers are not uniform samples of the clients: user-level DP needs a synchronous one"
            raise ConfigError("strategy.name", detail)
        self.user_privacy.check_against(
            clients=self.clients,
            aggregator=rules.aggregator,
            clip_norm=rules.clip_norm,
            clients_per_round=rules.clients_per_round,
        )

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "strategy": self.strategy.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Build from plain data (TOML, JSON, an event); unknown keys are errors naming the key.

        Configs written before tasks (``model`` and ``dataset``, e.g. in an older event log) read as the
        built-in task of that model; those written before ``user_privacy`` or ``plans`` have them off."""
        data = upcast_task(data)
        privacy = _section(PrivacyConfig, "privacy", data.pop("privacy", {}))
        round_ = _section(RoundConfig, "round", data.pop("round", {}))
        strategy = StrategyConfig.from_dict(data.pop("strategy", {}))
        user_privacy = _section(UserPrivacyConfig, "user_privacy", data.pop("user_privacy", {}))
        plans = _section(PlansConfig, "plans", data.pop("plans", {}))
        sections = {
            "privacy": privacy,
            "round": round_,
            "strategy": strategy,
            "user_privacy": user_privacy,
            "plans": plans,
        }
        config: RunConfig = _build(cls, "", {**data, **sections})
        return config


def upcast_task(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with a pre-task ``model`` / ``dataset`` pair replaced by the built-in ``task`` it names."""
    data = dict(data)
    if "task" not in data and "model" in data:
        model, dataset = data.pop("model"), data.pop("dataset", None)
        if isinstance(model, str) and dataset is not None and MODELS.get(model) != dataset:
            raise ConfigError("model", f"{model!r:.100} does not train on {dataset!r:.100}")
        data["task"] = model
    return data


def _section(cls: type[Any], name: str, data: Any) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(name, f"must be a table of options, got {data!r:.100}")
    return _build(cls, f"{name}.", data)


def _build(cls: type[Any], prefix: str, data: dict[str, Any]) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            raise ConfigError(f"{prefix}{key}", f"unknown option; allowed: {', '.join(sorted(known))}")
    try:
        return cls(**data)
    except TypeError as exc:  # a wrong type that the checks did not name
        raise ConfigError(prefix.rstrip(".") or "config", str(exc)) from exc
