"""Finding a task by its reference: a name registered under the entry-point group ``fedbus.tasks``, or
``package.module:attribute``.

The built-in tasks are entry points of fedbus itself; a package of yours registers its own the same way
(in pyproject.toml: ``[project.entry-points."fedbus.tasks"] mytask = "mypkg.task:task"``). A module that
is not installed is found in the folders of ``FEDBUS_TASK_PATH`` (``os.pathsep``-separated); `fedbus run
--config DIR/fedbus.toml` adds DIR. The attribute is a `Task` or a function of no arguments returning one.
"""

from __future__ import annotations

import importlib
import os
import sys
from functools import cache
from importlib import metadata

from contracts.catalog import BUILTIN_TASK_REFS, TASK_ENTRY_POINTS, check_task
from contracts.errors import ConfigError
from fedbus.errors import TaskError
from fedbus.task import Task
from ops.settings import TASK_PATH_ENV

__all__ = ["load_task"]


def load_task(ref: str) -> Task:
    """The task `ref` names; TaskError in one line when it is unknown, does not import or is not a Task."""
    try:
        check_task(ref)
    except ConfigError as exc:
        raise TaskError(str(exc)) from None
    return _load(ref)


@cache
def _load(ref: str) -> Task:
    _extend_sys_path()
    entry = None if ":" in ref else next(iter(metadata.entry_points(group=TASK_ENTRY_POINTS, name=ref)), None)
    if entry is None and ref in BUILTIN_TASK_REFS:
        return _load(BUILTIN_TASK_REFS[ref])  # a checkout run without `pip install`: no entry points
    if ":" in ref:
        module_name, _, attribute = ref.partition(":")
        try:
            found: object = importlib.import_module(module_name)
        except Exception as exc:  # the user's module: whatever it raises, one line naming it
            raise TaskError(f"task {ref}: cannot import {module_name}: {type(exc).__name__}: {exc}") from None
        for part in attribute.split("."):
            if not hasattr(found, part):
                raise TaskError(f"task {ref}: {module_name} has no attribute {attribute}")
            found = getattr(found, part)
    else:
        if entry is None:  # check_task saw it; it went away since (a package uninstalled)
            raise TaskError(f"task {ref}: no entry point {ref!r} in the group {TASK_ENTRY_POINTS}")
        try:
            found = entry.load()
        except Exception as exc:
            raise TaskError(f"task {ref}: cannot load entry point {entry.value}: {type(exc).__name__}: {exc}") from None
    if callable(found) and not isinstance(found, Task):
        try:
            found = found()
        except TaskError:
            raise
        except Exception as exc:
            raise TaskError(f"task {ref}: calling it failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(found, Task):
        raise TaskError(f"task {ref}: is a {type(found).__name__}, not a fedbus.Task")
    return found


def _extend_sys_path() -> None:
    for folder in os.environ.get(TASK_PATH_ENV, "").split(os.pathsep):
        if folder and folder not in sys.path:
            sys.path.insert(0, folder)
