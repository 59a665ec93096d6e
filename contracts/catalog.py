"""The names a run config may use for built-in models, data sets and aggregation rules: written here once.

Contracts stay torch-free, so the learning code (workers/learning) keys its registries by these constants, and
a test checks that each registry covers exactly its catalog. A run naming anything else is refused where its
config is built (RunConfig): an HTTP 400, exit 2 on the CLI, a coordinator that will not start it; never a
RunCreated that no aggregator can act on.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from contracts.errors import ConfigError

MNIST: Final = "mnist"
CIFAR10: Final = "cifar10"
DATASETS: Final = (MNIST, CIFAR10)

MNIST_DP_CNN: Final = "mnist_dp_cnn"
MNIST_CNN: Final = "mnist_cnn"
CIFAR10_CNN: Final = "cifar10_cnn"
MODELS: Final[Mapping[str, str]] = MappingProxyType({MNIST_DP_CNN: MNIST, MNIST_CNN: MNIST, CIFAR10_CNN: CIFAR10})
"""Each built-in model and the data set its input layer is shaped for."""

FEDAVG: Final = "fedavg"
MEDIAN: Final = "median"
TRIMMED_MEAN: Final = "trimmed_mean"
KRUM: Final = "krum"
AGGREGATORS: Final = (FEDAVG, MEDIAN, TRIMMED_MEAN, KRUM)


def check_model(model: str, dataset: str | None = None) -> None:
    """ConfigError("model", ...) unless ``model`` is in MODELS and, when ``dataset`` is given, shaped for it."""
    if model not in MODELS:
        raise ConfigError("model", f"unknown model {model!r:.100}; one of {', '.join(MODELS)}")
    if dataset is not None and MODELS[model] != dataset:
        raise ConfigError("model", f"{model} trains on {MODELS[model]}, not {dataset:.100}")


__all__ = [
    "AGGREGATORS",
    "CIFAR10",
    "CIFAR10_CNN",
    "DATASETS",
    "FEDAVG",
    "KRUM",
    "MEDIAN",
    "MNIST",
    "MNIST_CNN",
    "MNIST_DP_CNN",
    "MODELS",
    "TRIMMED_MEAN",
    "check_model",
]
