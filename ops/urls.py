"""Connection URLs as they may be shown: in messages and logs, never with their password."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final
from urllib.parse import urlsplit

from contracts.errors import ConfigError

MEMORY_SCHEME: Final = "memory"  # `memory://`: an in-memory twin, for tests and the embedded mode


def redacted(url: str) -> str:
    """`url` with its password replaced by `***`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()


def shown(url: str) -> str:
    """`url` quoted for an error message without its password, or "the value" when no safe form exists."""
    if "://" not in url:
        return "the value"  # no authority to find a password in, so none of it is echoed
    try:
        return repr(redacted(url))
    except ValueError:  # urlsplit refuses it (a bad port or IPv6 host): echo nothing
        return "the value"


def adapter_scheme(url: str, *, field: str, schemes: Sequence[str], kind: str) -> str:
    """The lowercased scheme of `url`, one of `schemes` (`memory` only as a bare `memory://`).

    ConfigError(field) otherwise, naming the allowed schemes and showing the URL without its password: the
    one check that picks an adapter from a URL (`open_broker`, `open_event_log`).
    """
    scheme, separator, rest = url.partition("://")
    scheme = scheme.lower()
    if scheme == MEMORY_SCHEME and separator and rest:
        raise ConfigError(field, f"{shown(url)} names a host or path; memory:// takes none")
    if not separator or scheme not in schemes:
        allowed = ", ".join(f"{name}://" for name in schemes)
        raise ConfigError(field, f"{shown(url)} is not {kind}; schemes: {allowed}")
    return scheme
