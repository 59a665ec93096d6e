"""Opening the robust RabbitMQ connection, under the one named retry policy of the broker layer."""

from __future__ import annotations

import logging
import time

import aio_pika
from aio_pika.abc import AbstractRobustConnection
from aio_pika.exceptions import AMQPConnectionError, AuthenticationError, ProbableAuthenticationError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from broker.errors import BrokerUnavailable
from contracts.errors import ConfigError
from ops.urls import shown

log = logging.getLogger(__name__)

# A broker that is not there at start-up is far more often a wrong URL than one still starting: give up
# after this long (the most a deployed role waits before it says so), whatever the attempts allow.
STARTUP_DEADLINE_S = 10.0
# A connection that was up and dropped is aio-pika's to restore (every `reconnect_interval`): an idempotent
# declaration that failed meanwhile is retried for this long before the role gives up.
RECONNECT_DEADLINE_S = 60.0


def _is_connection_error(error: BaseException) -> bool:
    if isinstance(error, AuthenticationError | ProbableAuthenticationError):
        return False  # wrong credentials do not heal by waiting
    return isinstance(error, AMQPConnectionError | ConnectionError | OSError | TimeoutError)


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome is not None else None
    log.warning("connecting to RabbitMQ failed (attempt %d): %r", state.attempt_number, error)


def initial_connect_policy(attempts: int, deadline_s: float = STARTUP_DEADLINE_S) -> AsyncRetrying:
    """Retry connection errors of the first connect with exponential backoff, for at most `attempts` and
    about `deadline_s` seconds in all; reconnects are aio-pika's."""
    return AsyncRetrying(
        retry=retry_if_exception(_is_connection_error),
        stop=stop_after_attempt(attempts) | stop_after_delay(deadline_s),
        wait=wait_exponential(multiplier=0.2, max=3.0),
        before_sleep=_log_retry,
        reraise=True,
    )


def _log_reconnect_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome is not None else None
    log.warning("RabbitMQ unavailable, retrying (attempt %d): %s", state.attempt_number, error)


def while_reconnecting(deadline_s: float = RECONNECT_DEADLINE_S) -> AsyncRetrying:
    """Retry an idempotent broker call (declare, consume) that raised BrokerUnavailable because the connection
    dropped, while the robust connection comes back; gives up after about `deadline_s` seconds."""
    return AsyncRetrying(
        retry=retry_if_exception_type(BrokerUnavailable),
        stop=stop_after_delay(deadline_s),
        wait=wait_exponential(multiplier=0.5, max=5.0),
        before_sleep=_log_reconnect_retry,
        reraise=True,
    )


async def connect_robust(
    url: str,
    *,
    attempts: int = 5,
    reconnect_interval: float = 2.0,
    connect_timeout: float = 10.0,
    startup_deadline_s: float = STARTUP_DEADLINE_S,
) -> AbstractRobustConnection:
    """A robust connection (it reconnects and restores channels, queues and consumers by itself).

    BrokerUnavailable, naming the URL without its password, when no connect succeeded within
    `startup_deadline_s` seconds (an attempt under way gets the time left) or `attempts` attempts.
    """
    if attempts < 1:
        raise ConfigError("connect_attempts", "must be at least 1")
    if startup_deadline_s <= 0:
        raise ConfigError("startup_deadline_s", "must be positive")
    deadline = time.monotonic() + startup_deadline_s

    async def attempt() -> AbstractRobustConnection:
        timeout = max(0.1, min(connect_timeout, deadline - time.monotonic()))
        return await aio_pika.connect_robust(url, timeout=timeout, reconnect_interval=reconnect_interval)

    try:
        return await initial_connect_policy(attempts, startup_deadline_s)(attempt)
    except (AMQPConnectionError, ConnectionError, OSError, TimeoutError) as exc:
        raise BrokerUnavailable(f"cannot connect to RabbitMQ at {shown(url)}: {_reason(exc)}") from exc


def _reason(error: BaseException) -> str:
    """What went wrong in words: aio-pika wraps the socket's error in an AMQPConnectionError."""
    cause = error.args[-1] if isinstance(error, AMQPConnectionError) and error.args else error
    return str(cause) or type(cause).__name__
