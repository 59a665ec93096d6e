"""Federated evaluation: each selected client scores the model its round starts from on its own test data,
and the scores travel in its update's metrics as ``eval_<name>`` with ``eval_samples``.

The round's cohort thereby evaluates the global model the previous round produced (model version
``round.model_version``), without a download or a message of its own; one function weights the clients'
scores by their test samples, for the run-state fold and the API alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

EVAL_PREFIX: Final = "eval_"
EVAL_SAMPLES: Final = "eval_samples"


@dataclass(frozen=True, slots=True, kw_only=True)
class FederatedEvaluation:
    """The sample-weighted mean of each metric the clients reported for one model version."""

    model_version: int
    metrics: dict[str, float]
    samples: int
    clients: int

    def to_dict(self) -> dict[str, object]:
        return {"model_version": self.model_version, "samples": self.samples, "clients": self.clients, **self.metrics}


def federated_evaluation(model_version: int, reports: Iterable[Mapping[str, float]]) -> FederatedEvaluation | None:
    """The weighted evaluation in the metrics of a round's accepted updates; None when none evaluated."""
    sums: dict[str, float] = {}
    samples = clients = 0
    for metrics in reports:
        count = metrics.get(EVAL_SAMPLES)
        if not isinstance(count, int | float) or isinstance(count, bool) or count < 1:
            continue
        clients += 1
        samples += int(count)
        for name, value in metrics.items():
            if name.startswith(EVAL_PREFIX) and name != EVAL_SAMPLES and isinstance(value, int | float):
                key = name.removeprefix(EVAL_PREFIX)
                sums[key] = sums.get(key, 0.0) + float(value) * int(count)
    if not clients:
        return None
    means = {name: total / samples for name, total in sums.items()}
    return FederatedEvaluation(model_version=model_version, metrics=means, samples=samples, clients=clients)
