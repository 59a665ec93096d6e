"""Stream ids of the event log: one stream per run and one per client (DESIGN.md §6)."""

from __future__ import annotations

from typing import Final

RUN_PREFIX: Final = "run:"
CLIENT_PREFIX: Final = "client:"


def run_stream(run_id: str) -> str:
    """The stream holding every event of one run (its version orders the run's decisions)."""
    return f"{RUN_PREFIX}{run_id}"


def client_stream(client_id: str) -> str:
    """The stream holding a client's registration and eviction."""
    return f"{CLIENT_PREFIX}{client_id}"
