"""The errors a task or its data raise, each with a message that names what is wrong and how to fix it.

A client that meets one declines the round with its reason (`task_unavailable`, `data_unavailable`) and
the run goes on with the others; `fedbus run` prints it on one line and exits 2.
"""

from __future__ import annotations

from contracts.errors import FedbusError


class TaskError(FedbusError):
    """A task that cannot be loaded or used: it does not import, it is not a Task, or Opacus cannot train it."""


class DataUnavailable(FedbusError):
    """A client's data is missing, empty or malformed; the message says where it was looked for."""
