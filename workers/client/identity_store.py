"""The client's identity on its own disk: the client secret of each instance name, kept across restarts.

The coordinator hands an instance name's identity back only to a caller presenting the secret it gave out at
the first registration, so a restarted client keeps its identity (and its privacy ledger) and nobody else can
take it. One small JSON file per instance name, readable by its owner only, replaced atomically.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


class IdentityStore:
    def __init__(self, folder: Path, instance_name: str) -> None:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in instance_name)
        self._path = folder / f"identity-{safe}.json"

    def secret(self) -> str:
        """The secret kept for this instance name, or "" before its first registration."""
        try:
            data = json.loads(self._path.read_text())
        except FileNotFoundError:
            return ""
        except (OSError, ValueError) as exc:
            raise OSError(f"cannot read the client identity {self._path}: {exc}") from exc
        secret = data.get("client_secret") if isinstance(data, dict) else None
        return secret if isinstance(secret, str) else ""

    def keep(self, client_id: str, secret: str) -> None:
        """Remember the secret a first registration handed out."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._path.parent, prefix=self._path.name)
        with os.fdopen(fd, "w") as f:  # mkstemp: mode 0600
            json.dump({"client_id": client_id, "client_secret": secret}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path)
