"""A simulated share claimed among identical replicas (`FEDBUS_SHARE=any/N`, compose's `--scale client=N`).

Share i of N is the lock file ``share-<i>-of-<N>`` in a folder the replicas share (`FEDBUS_SHARE_CLAIMS`). A
client holds an exclusive `flock` on its file for as long as its process lives: a share is never held twice,
and it is free again the moment its holder ends, however it ends (no stale claims to clean up). The file
keeps the last holder's instance name, and a restarted client takes that share back before any other, so
its data stays the records its privacy ledger has counted.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from contracts.errors import ConfigError
from ops.settings import Share

__all__ = ["ShareClaim", "claim_share"]


@dataclass(slots=True)
class ShareClaim:
    """A held share: `index` of `count`, until `release` (or the process's end)."""

    index: int
    count: int
    path: Path
    _fd: int

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing drops the flock
            self._fd = -1


def claim_share(folder: Path, count: int, instance_name: str) -> ShareClaim:
    """Hold a free share of `count` in `folder`: the one `instance_name` held last if it is free, else the
    lowest free one. ConfigError when every share is held by a running client."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError("FEDBUS_SHARE_CLAIMS", f"cannot use {folder} for share claims: {exc.strerror}") from exc
    paths = [folder / f"share-{i}-of-{count}" for i in range(count)]
    previous = [i for i, path in enumerate(paths) if _holder(path) == instance_name]
    for index in previous + [i for i in range(count) if i not in previous]:
        fd = _lock(paths[index])
        if fd is not None:
            os.ftruncate(fd, 0)
            os.pwrite(fd, instance_name.encode(), 0)
            return ShareClaim(index, count, paths[index], fd)
    raise ConfigError(
        "FEDBUS_SHARE",
        f"all {count} shares in {folder} are held by running clients: run at most {count}, or raise N in "
        f"{Share(None, count)}",
    )


def _holder(path: Path) -> str:
    with contextlib.suppress(OSError, UnicodeDecodeError):
        return path.read_text()
    return ""


def _lock(path: Path) -> int | None:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise ConfigError("FEDBUS_SHARE_CLAIMS", f"cannot open {path}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
