"""Limits and metadata keys that the coordinator and its clients must agree on (DESIGN.md §5)."""

from __future__ import annotations

from typing import Final

CHUNK_SIZE: Final = 1 << 20
"""Bytes of model or update per gRPC message: well below the receive limit."""

MAX_MESSAGE_BYTES: Final = 4 << 20
"""gRPC send and receive limit on both sides; a chunk plus the header and protobuf framing fit."""

RETRY_AFTER_KEY: Final = "fedbus-retry-after-ms"
"""Trailing metadata of a RESOURCE_EXHAUSTED from load shedding: milliseconds to wait before retrying.
A size cap carries no such key, so a client retries only what shedding refused."""
