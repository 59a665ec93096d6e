"""Opening the robust RabbitMQ connection, under the one named retry policy of the broker layer."""

from __future__ import annotations

import logging

import aio_pika
from aio_pika.abc import AbstractRobustConnection
from aio_pika.exceptions import AMQPConnectionError, AuthenticationError, ProbableAuthenticationError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from broker.errors import BrokerUnavailable
from contracts.errors import ConfigError

log = logging.getLogger(__name__)


def _is_connection_error(error: BaseException) -> bool:
    if isinstance(error, AuthenticationError | ProbableAuthenticationError):
        return False  # wrong credentials do not heal by waiting
    return isinstance(error, AMQPConnectionError | ConnectionError | OSError | TimeoutError)


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome is not None else None
    log.warning("connecting to RabbitMQ failed (attempt %d): %r", state.attempt_number, error)


def initial_connect_policy(attempts: int) -> AsyncRetrying:
    """Retry connection errors of the first connect with exponential backoff; reconnects are aio-pika's."""
    return AsyncRetrying(
        retry=retry_if_exception(_is_connection_error),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=0.2, max=3.0),
        before_sleep=_log_retry,
        reraise=True,
    )


async def connect_robust(
    url: str, *, attempts: int = 5, reconnect_interval: float = 2.0, connect_timeout: float = 10.0
) -> AbstractRobustConnection:
    """A robust connection (it reconnects and restores channels, queues and consumers by itself)."""
    if attempts < 1:
        raise ConfigError("connect_attempts", "must be at least 1")
    try:
        async for attempt in initial_connect_policy(attempts):
            with attempt:
                return await aio_pika.connect_robust(
                    url, timeout=connect_timeout, reconnect_interval=reconnect_interval
                )
    except (AMQPConnectionError, ConnectionError, OSError, TimeoutError) as exc:
        raise BrokerUnavailable(f"cannot connect to RabbitMQ: {exc!r}") from exc
    raise BrokerUnavailable("cannot connect to RabbitMQ")  # unreachable: the policy reraises
