"""The names a run config may use for built-in models, data sets and aggregation rules: written here once.

Contracts stay torch-free, so the learning code (workers/learning) keys its registries by these names, and a
test checks that each registry covers exactly its catalog. A run naming anything else is refused where its
config is built (RunConfig): an HTTP 400, exit 2 on the CLI, a coordinator that will not start it; never a
RunCreated that no aggregator can act on.
"""

from __future__ import annotations

from typing import Final

DATASETS: Final = ("mnist", "cifar10")
MODELS: Final[dict[str, str]] = {"mnist_dp_cnn": "mnist", "mnist_cnn": "mnist", "cifar10_cnn": "cifar10"}
"""Each built-in model and the data set its input layer is shaped for."""
AGGREGATORS: Final = ("fedavg", "median", "trimmed_mean", "krum")
