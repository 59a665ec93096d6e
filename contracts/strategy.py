"""Strategies: how a round's combined update becomes the next global model (the server step, with state kept
across rounds), and what goes out to clients with each round (FedProx's proximal term).

One registry of names and their keyword options, validated where a run's config is built; the server steps
themselves are in workers/learning/strategies.py (a test pins the two registries together). How the clients'
updates are combined before the server step (weighted mean, median, trimmed mean, Krum) is `round.aggregator`:
every combination rule composes with every strategy, so they are not multiplied into one list of names.

References: FedAvg (McMahan et al. 2017); FedAvgM (Hsu et al. 2019, server momentum); FedAdagrad, FedAdam,
FedYogi (Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2); FedProx (Li et al. 2020);
FedBuff (Nguyen et al. 2022, "Federated Learning with Buffered Asynchronous Aggregation", Algorithm 1).

FedBuff is the asynchronous one: a round is a buffer of `buffer_size` updates, whichever model version each
was trained on, and a client still training when a buffer closes is not cut off: its update goes into a
later buffer, weighted by its staleness (see `staleness_weight`), unless it is more than `max_staleness`
versions old.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from contracts.errors import ConfigError

__all__ = ["OPTIONS", "STRATEGIES", "StrategyConfig"]

FEDAVG: Final = "fedavg"
FEDAVGM: Final = "fedavgm"
FEDADAGRAD: Final = "fedadagrad"
FEDADAM: Final = "fedadam"
FEDYOGI: Final = "fedyogi"
FEDPROX: Final = "fedprox"
FEDBUFF: Final = "fedbuff"

Range = tuple[float, float]  # closed, except a lower bound of 0.0 on a rate, which is open (see _check)
_ADAPTIVE: Final = {
    "server_lr": (0.01, (0.0, 100.0)),
    "beta1": (0.9, (0.0, 0.9999)),
    "beta2": (0.99, (0.0, 0.9999)),
    "tau": (1e-3, (0.0, 10.0)),
    "bias_correction": (True, None),
}
OPTIONS: Final[Mapping[str, Mapping[str, tuple[Any, Range | None]]]] = MappingProxyType(
    {
        FEDAVG: {},
        FEDAVGM: {"server_lr": (1.0, (0.0, 100.0)), "momentum": (0.9, (0.0, 0.9999))},
        FEDADAGRAD: {k: v for k, v in _ADAPTIVE.items() if k != "beta2"},  # Adagrad sums squares: no beta2
        FEDADAM: _ADAPTIVE,
        FEDYOGI: _ADAPTIVE,
        FEDPROX: {"mu": (0.01, (0.0, 1000.0))},
        FEDBUFF: {
            "server_lr": (1.0, (0.0, 100.0)),
            "buffer_size": (5, (1, 100_000)),  # K: updates per server step
            "max_staleness": (4, (0, 100_000)),  # versions an update's base model may lag the buffer's
            "staleness_exponent": (0.5, (0.0, 10.0)),  # a in s(tau) = (1 + tau)^-a; the paper's 1/sqrt(1+tau)
        },
    }
)
"""Each strategy's options: (default, allowed range; None for a flag)."""
STRATEGIES: Final = tuple(OPTIONS)
_RATES: Final = frozenset({"server_lr", "tau", "mu"})  # must be > 0
_INTEGERS: Final = frozenset({"buffer_size", "max_staleness"})


@dataclass(frozen=True, slots=True, kw_only=True)
class StrategyConfig:
    """A strategy by name with its options (missing ones take the defaults of OPTIONS)."""

    name: str = FEDAVG
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in OPTIONS:
            raise ConfigError("strategy.name", f"unknown strategy {self.name!r:.100}; allowed: {', '.join(STRATEGIES)}")
        allowed = OPTIONS[self.name]
        for key, value in self.options.items():
            if key not in allowed:
                known = ", ".join(allowed) or "none"
                raise ConfigError(f"strategy.{key}", f"not an option of {self.name}; its options: {known}")
            _check(f"strategy.{key}", value, allowed[key][1], rate=key in _RATES)
            if key in _INTEGERS and not isinstance(value, int):
                raise ConfigError(f"strategy.{key}", f"must be a whole number, got {value!r:.100}")

    def option(self, key: str) -> Any:
        """The option's value, or its default."""
        return self.options.get(key, OPTIONS[self.name][key][0])

    @property
    def proximal_mu(self) -> float:
        """FedProx's mu, which clients apply in local training; 0 for every other strategy."""
        return float(self.option("mu")) if self.name == FEDPROX else 0.0

    @property
    def asynchronous(self) -> bool:
        """Whether rounds are FedBuff's buffers (updates from older model versions count, staleness-weighted)."""
        return self.name == FEDBUFF

    @property
    def buffer_size(self) -> int:
        """FedBuff's K; 0 for the synchronous strategies, whose rounds close on `round.quorum`."""
        return int(self.option("buffer_size")) if self.asynchronous else 0

    @property
    def max_staleness(self) -> int:
        """How many versions an update's base model may lag the buffer's base; 0 for the synchronous ones."""
        return int(self.option("max_staleness")) if self.asynchronous else 0

    def staleness_weight(self, staleness: int) -> float:
        """FedBuff's s(tau) = (1 + tau)^-a, which scales an update trained `staleness` versions ago (1.0 for the
        synchronous strategies, where every update is trained on the round's model)."""
        if not self.asynchronous:
            return 1.0
        return float((1.0 + staleness) ** -float(self.option("staleness_exponent")))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.options}

    @classmethod
    def from_dict(cls, data: Any) -> StrategyConfig:
        """From ``{"name": ..., <option>: ...}`` (a TOML table ``[run.strategy]``, JSON, an event)."""
        if not isinstance(data, Mapping):
            raise ConfigError("strategy", f"must be a table of options, got {data!r:.100}")
        options = dict(data)
        name = options.pop("name", FEDAVG)
        if not isinstance(name, str):
            raise ConfigError("strategy.name", f"must be a string, got {name!r:.100}")
        return cls(name=name, options=options)


def _check(name: str, value: Any, allowed: Range | None, *, rate: bool) -> None:
    if allowed is None:
        if not isinstance(value, bool):
            raise ConfigError(name, f"must be true or false, got {value!r:.100}")
        return
    low, high = allowed
    number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not number or value < low or value > high or (rate and value <= low):
        bounds = f"{'(' if rate else '['}{low}, {high}]"
        raise ConfigError(name, f"must be a number in {bounds}, got {value!r:.100}")
