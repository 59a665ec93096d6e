"""fedbus' public API: bring your own model and data as a Task; fedbus federates it with DP.

    from fedbus import Task, local_files

Everything importable from here is kept stable; the layers below (contracts, services, workers, broker,
persistence, ops) are fedbus' own and may change. See docs/tasks.md.
"""

from __future__ import annotations

from fedbus.data import DataRequest, LocalData, Samples, Simulation, Transform, image_folder, local_files, npz_files
from fedbus.errors import DataUnavailable, TaskError
from fedbus.loading import load_task
from fedbus.task import Batch, Loss, Metrics, Task, TrainStep, accuracy, check_private, supervised_step

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
