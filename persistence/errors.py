"""Driver errors become the layer's own errors here, in one place; only transient ones are retried.

- IntegrityError on UNIQUE(stream_id, version) or UNIQUE(event_id) -> ConcurrencyConflict
- lost connections, refused connects, busy/locked databases, serialization failures -> TransientError
- a login the database refuses or a database that does not exist -> ConfigError("database_url"): the
  operator's to fix, one line at the CLI, never retried
- anything else propagates unchanged: it is a bug, not weather.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import exc as sa_exc
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from contracts.errors import ConcurrencyConflict, ConfigError, TransientError
from persistence.schema import EVENT_ID_CONSTRAINT, STREAM_VERSION_CONSTRAINT

T = TypeVar("T")

# SQLSTATE classes/codes that may pass on retry: connection exceptions, serialization failure, deadlock,
# server shutting down or starting, too many connections, lock not available.
_TRANSIENT_SQLSTATES = ("08", "40001", "40P01", "57P01", "57P02", "57P03", "53300", "55P03")
_TRANSIENT_SQLITE = {"SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_IOERR", "SQLITE_CANTOPEN"}
# SQLSTATE (or its class) -> what the operator should check: no retry will mend these.
_OPERATOR_SQLSTATES = (
    ("28", "the database refused the login: check the user and password of FEDBUS_DATABASE_URL"),
    ("3D000", "no such database: check FEDBUS_DATABASE_URL, or create it with `fedbus db upgrade`"),
)
# PostgreSQL names the constraint; SQLite names the columns.
_APPEND_CONSTRAINTS = (STREAM_VERSION_CONSTRAINT, EVENT_ID_CONSTRAINT)
_APPEND_MARKERS = (*_APPEND_CONSTRAINTS, "events.stream_id, events.version", "events.event_id")


def is_append_conflict(error: BaseException) -> bool:
    """True when `error` violates UNIQUE(stream_id, version) or UNIQUE(event_id) of the events table."""
    if not isinstance(error, sa_exc.IntegrityError):
        return False
    text = str(error.orig)
    constraint = getattr(getattr(error.orig, "__cause__", None), "constraint_name", None)
    return constraint in _APPEND_CONSTRAINTS or any(marker in text for marker in _APPEND_MARKERS)


def is_transient(error: BaseException) -> bool:
    """True when `error` says the database was unreachable or busy rather than the request wrong."""
    if isinstance(error, TransientError | OSError | TimeoutError):
        return True
    if isinstance(error, sa_exc.DBAPIError):
        if error.connection_invalidated or isinstance(error, sa_exc.InterfaceError):
            return True
        return _is_transient_driver_error(error.orig)
    # Some connect failures reach us without SQLAlchemy's wrapper (asyncpg raises them directly).
    return type(error).__module__.startswith("asyncpg") and _is_transient_driver_error(error)


def _is_transient_driver_error(orig: BaseException | None) -> bool:
    if orig is None:
        return False
    if isinstance(orig, OSError | TimeoutError):
        return True
    sqlstate = getattr(orig, "sqlstate", None)
    if isinstance(sqlstate, str):
        return sqlstate.startswith(_TRANSIENT_SQLSTATES)
    if isinstance(orig, sqlite3.Error):
        return getattr(orig, "sqlite_errorname", "") in _TRANSIENT_SQLITE or "locked" in str(orig)
    name = type(orig).__name__
    return name in {"ConnectionDoesNotExistError", "ConnectionFailureError", "CannotConnectNowError"}


def operator_refusal(error: BaseException) -> str | None:
    """One line saying what the operator got wrong when the database refused the login or the database name,
    with the driver's own words (which never hold the password); None otherwise."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        sqlstate = getattr(current, "sqlstate", None)
        for prefix, meaning in _OPERATOR_SQLSTATES:
            if isinstance(sqlstate, str) and sqlstate.startswith(prefix):
                return f"{meaning} ({' '.join(str(current).split())})"
        orig = current.orig if isinstance(current, sa_exc.DBAPIError) else None
        current = orig or current.__cause__ or current.__context__
    return None


@contextmanager
def translated(action: str) -> Iterator[None]:
    """Run a block of driver calls, raising ConcurrencyConflict / TransientError in place of driver errors."""
    try:
        yield
    except (ConcurrencyConflict, TransientError):
        raise
    except sa_exc.IntegrityError as error:
        if is_append_conflict(error):
            raise ConcurrencyConflict(f"{action}: stream version or event id already taken") from error
        raise
    except Exception as error:
        if (refusal := operator_refusal(error)) is not None:
            raise ConfigError("database_url", refusal) from error
        if is_transient(error):
            raise TransientError(f"{action}: {type(error).__name__}: {error}") from error
        raise


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """A named tenacity policy: exponential backoff with full jitter, only for TransientError."""

    name: str
    attempts: int = 5
    initial_wait_s: float = 0.1
    max_wait_s: float = 2.0

    def retrying(self) -> AsyncRetrying:
        """A fresh tenacity controller for one call."""
        return AsyncRetrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_random_exponential(multiplier=self.initial_wait_s, max=self.max_wait_s),
            retry=retry_if_exception_type(TransientError),
            reraise=True,
        )


IDEMPOTENT_IO = RetryPolicy(name="persistence.idempotent_io")


async def retried(policy: RetryPolicy, call: Callable[[], Awaitable[T]]) -> T:
    """Await `call()` under `policy`: TransientError is retried, everything else raised at once."""
    return await policy.retrying()(call)


__all__ = [
    "IDEMPOTENT_IO",
    "RetryPolicy",
    "is_append_conflict",
    "is_transient",
    "operator_refusal",
    "retried",
    "translated",
]
