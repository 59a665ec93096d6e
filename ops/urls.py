"""Connection URLs as they may be shown: in messages and logs, never with their password."""

from __future__ import annotations

from urllib.parse import urlsplit


def redacted(url: str) -> str:
    """`url` with its password replaced by `***`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()
