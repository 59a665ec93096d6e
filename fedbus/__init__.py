"""fedbus' public API: bring your own model and data as a Task; fedbus federates it with DP.

    from fedbus import Task, local_files

Everything importable from here is kept stable; the layers below (contracts, services, workers, broker,
persistence, ops) are fedbus' own and may change. See docs/tasks.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fedbus.data import DataRequest, LocalData, Simulation, image_folder, local_files, npz_files
from fedbus.errors import DataUnavailable, TaskError

if TYPE_CHECKING:
    from fedbus.data import Samples, Transform
    from fedbus.loading import load_task
    from fedbus.task import Batch, Loss, Metrics, Task, TrainStep, accuracy, check_private, supervised_step

# What needs torch is imported on first use (PEP 562), so that `import fedbus` is cheap for a process that
# never trains (a client's own process, the coordinator): `from fedbus import Task` works as before.
_LAZY = {
    **dict.fromkeys(("Samples", "Transform"), "fedbus.data"),
    "load_task": "fedbus.loading",
    **dict.fromkeys(
        ("Batch", "Loss", "Metrics", "Task", "TrainStep", "accuracy", "check_private", "supervised_step"), "fedbus.task"
    ),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Batch",
    "DataRequest",
    "DataUnavailable",
    "LocalData",
    "Loss",
    "Metrics",
    "Samples",
    "Simulation",
    "Task",
    "TaskError",
    "TrainStep",
    "Transform",
    "accuracy",
    "check_private",
    "image_folder",
    "load_task",
    "local_files",
    "npz_files",
    "supervised_step",
]
