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

KEEPALIVE_MS: Final = 10_000
"""A client pings its channel this often while a call is in flight, and gives the connection up when a ping
goes unanswered for KEEPALIVE_TIMEOUT_MS: a link that drops mid-upload fails the call (UNAVAILABLE, retried on a
new connection) within ~30 s, not at the call's deadline or whenever TCP's retransmission backoff next tries."""

KEEPALIVE_TIMEOUT_MS: Final = 20_000

MIN_CLIENT_PING_MS: Final = 5_000
"""The coordinator accepts a client's pings this often without counting them as abuse (gRPC's default is 5
minutes, past which it would close the connection with ENHANCE_YOUR_CALM)."""
