"""The contracts layer's small exception vocabulary."""

from __future__ import annotations


class FedbusError(Exception):
    """Base of every error fedbus raises on purpose."""


class ConfigError(FedbusError, ValueError):
    """An option or config value is outside what is allowed; the message names the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class CodecError(FedbusError, ValueError):
    """Bytes could not be decoded into the object they claim to be."""


class DigestMismatch(CodecError):
    """The sha256 of received bytes differs from the declared one."""


class UnknownEventType(CodecError):
    """An event type on the wire is not in the registry."""


class ConcurrencyConflict(FedbusError):
    """An append expected a stream version that another writer already took."""


class NotFound(FedbusError, LookupError):
    """A blob, stream or run that was asked for does not exist."""


class TransientError(FedbusError):
    """A failure that may pass on retry (connection lost, timeout); adapters retry, consumers requeue."""
