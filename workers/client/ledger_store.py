"""The client's privacy ledgers on its own disk, so a restarted client keeps counting its epsilon.

The data owner's accountant is the client's business: it is kept beside the client, not at the coordinator.
One JSON file per client identity, replaced atomically.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


class LedgerStore:
    def __init__(self, folder: Path, client_id: str) -> None:
        self._path = folder / f"privacy-ledger-{client_id}.json"

    def load(self, run_id: str) -> dict[str, Any] | None:
        """The ledger this client kept for `run_id`, or None (a fresh start)."""
        ledgers = self._read()
        ledger = ledgers.get(run_id)
        return ledger if isinstance(ledger, dict) else None

    def save(self, run_id: str, ledger: dict[str, Any]) -> None:
        ledgers = self._read()
        ledgers[run_id] = ledger
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._path.parent, prefix=self._path.name)
        with os.fdopen(fd, "w") as f:
            json.dump(ledgers, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path)

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self._path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            # Refusing to guess is the private choice: an unreadable ledger must not silently reset to zero.
            raise OSError(f"cannot read the privacy ledger {self._path}: {exc}") from exc
        return data if isinstance(data, dict) else {}
