"""Who an event log tells after a committed append (`EventLog.on_append`), shared by its adapters."""

from __future__ import annotations

import contextlib
from collections.abc import Callable


class AppendListeners:
    def __init__(self) -> None:
        self._listeners: list[Callable[[], None]] = []

    def add(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Adds `listener`; returns the function that removes it (a second call does nothing)."""
        self._listeners.append(listener)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return remove

    def notify(self) -> None:
        for listener in list(self._listeners):
            listener()
