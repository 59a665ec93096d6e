"""The broker layer's errors; adapters translate driver exceptions into these at one boundary."""

from __future__ import annotations

from contracts.errors import FedbusError, TransientError


class Unroutable(FedbusError):
    """A mandatory publish matched no bound queue (RabbitMQ returned it); publishing again will not help."""


class PublishTimeout(TransientError):
    """The broker did not confirm a publish within the publish timeout."""


class BrokerUnavailable(TransientError):
    """The connection or channel is down (or the broker is closed); the operation may pass later."""
