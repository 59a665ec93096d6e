"""A bound on open event streams: each holds a waitress worker thread, so at most `max_streams` may be open
and the rest of the workers stay free for reads, /healthz and /readyz."""

from __future__ import annotations

import threading
from collections.abc import Callable


class StreamSlots:
    """Counts open streams; `take` gives a release callable, or None when all slots are taken."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._open = 0
        self._lock = threading.Lock()

    @property
    def open(self) -> int:
        with self._lock:
            return self._open

    def take(self) -> Callable[[], None] | None:
        """A slot, never waiting: the caller refuses the stream when this is None."""
        with self._lock:
            if self._open >= self.capacity:
                return None
            self._open += 1
        held = True

        def release() -> None:
            nonlocal held
            with self._lock:  # idempotent: the response's close and an error path may both call it
                if held:
                    held = False
                    self._open -= 1

        return release


__all__ = ["StreamSlots"]
