"""The names a run config may use for built-in models, data sets and aggregation rules: written here once.

Contracts stay torch-free, so the learning code (workers/learning) keys its registries by these constants, and
a test checks that each registry covers exactly its catalog. A run naming anything else is refused where its
config is built (RunConfig): an HTTP 400, exit 2 on the CLI, a coordinator that will not start it; never a
RunCreated that no aggregator can act on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from importlib import metadata
from types import MappingProxyType
from typing import Final

from contracts.errors import ConfigError

MNIST: Final = "mnist"
CIFAR10: Final = "cifar10"
FASHION_MNIST: Final = "fashion_mnist"
DATASETS: Final = (MNIST, CIFAR10, FASHION_MNIST)

MNIST_DP_CNN: Final = "mnist_dp_cnn"
MNIST_CNN: Final = "mnist_cnn"
CIFAR10_CNN: Final = "cifar10_cnn"
FASHION_MNIST_CNN: Final = "fashion_mnist_cnn"
MODELS: Final[Mapping[str, str]] = MappingProxyType(
    {MNIST_DP_CNN: MNIST, MNIST_CNN: MNIST, CIFAR10_CNN: CIFAR10, FASHION_MNIST_CNN: FASHION_MNIST}
)
"""Each built-in model and the data set its input layer is shaped for."""

FEDAVG: Final = "fedavg"
MEDIAN: Final = "median"
TRIMMED_MEAN: Final = "trimmed_mean"
KRUM: Final = "krum"
AGGREGATORS: Final = (FEDAVG, MEDIAN, TRIMMED_MEAN, KRUM)


TASK_ENTRY_POINTS: Final = "fedbus.tasks"
"""The entry-point group naming tasks: fedbus' built-ins are registered here the way a user's package is."""
BUILTIN_TASKS: Final = tuple(MODELS)
"""The built-in tasks, each named after its model (workers/learning/builtin_tasks.py)."""
BUILTIN_TASK_REFS: Final[Mapping[str, str]] = MappingProxyType(
    {name: f"workers.learning.builtin_tasks:{name.upper()}_TASK" for name in BUILTIN_TASKS}
)
"""Where each built-in is: its entry point in setup.cfg (a test pins the two), and what a checkout that is
not pip-installed (no entry points) loads instead."""

_TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
_TASK_PATH = re.compile(f"{_DOTTED}:{_DOTTED}")


@cache
def registered_tasks() -> tuple[str, ...]:
    """The built-ins and the names registered under TASK_ENTRY_POINTS in this Python environment, sorted."""
    return tuple(sorted({*BUILTIN_TASKS, *(entry.name for entry in metadata.entry_points(group=TASK_ENTRY_POINTS))}))


def check_task_ref(ref: object) -> None:
    """ConfigError("task", ...) unless `ref` is spelled as a task reference: a name (letters, digits,
    ``_ . -``) or ``package.module:attribute``. Whether it exists is for `check_task` where it is loaded."""
    if not isinstance(ref, str):
        raise ConfigError("task", f"must be a string, got {ref!r:.100}")
    if len(ref) > 200 or not (_TASK_PATH.fullmatch(ref) if ":" in ref else _TASK_NAME.fullmatch(ref)):
        raise ConfigError("task", f"{ref!r:.100} is neither a task name nor package.module:attribute")


def check_task(ref: object) -> None:
    """`check_task_ref`, and a name must be registered here (a built-in, or an installed package's entry point)."""
    check_task_ref(ref)
    assert isinstance(ref, str)
    if ":" not in ref and ref not in registered_tasks():
        known = ", ".join(registered_tasks()) or "none"
        raise ConfigError(
            "task", f"unknown task {ref!r:.100}; registered here: {known}; or give package.module:attribute"
        )


def check_model(model: str, dataset: str | None = None) -> None:
    """ConfigError("model", ...) unless ``model`` is in MODELS and, when ``dataset`` is given, shaped for it."""
    if model not in MODELS:
        raise ConfigError("model", f"unknown model {model!r:.100}; one of {', '.join(MODELS)}")
    if dataset is not None and MODELS[model] != dataset:
        raise ConfigError("model", f"{model} trains on {MODELS[model]}, not {dataset:.100}")


__all__ = [
    "AGGREGATORS",
    "BUILTIN_TASKS",
    "BUILTIN_TASK_REFS",
    "CIFAR10",
    "CIFAR10_CNN",
    "DATASETS",
    "FASHION_MNIST",
    "FASHION_MNIST_CNN",
    "FEDAVG",
    "KRUM",
    "MEDIAN",
    "MNIST",
    "MNIST_CNN",
    "MNIST_DP_CNN",
    "MODELS",
    "TASK_ENTRY_POINTS",
    "TRIMMED_MEAN",
    "check_model",
    "check_task",
    "check_task_ref",
    "registered_tasks",
]
