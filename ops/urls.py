"""Connection URLs as they may be shown: in messages and logs, never with their password."""

from __future__ import annotations

from urllib.parse import urlsplit


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
