"""Settings of `fedbus api`: frozen, built once from the environment, passed down.

FEDBUS_API_TOKENS holds "token:role,token:role" (roles viewer and admin); FEDBUS_API_TOKENS_FILE names a
file with the same list (commas or newlines). Tokens are secrets: never logged, never in repr.
FEDBUS_API_MAX_STREAMS, FEDBUS_API_STREAM_MAX_S and FEDBUS_API_MAX_BODY_BYTES override the limits below.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Final

from contracts.errors import ConfigError

PREFIX: Final = "FEDBUS_"
DEFAULT_DATABASE_URL: Final = "postgresql://root@127.0.0.1:5432/fedbus"
LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "::1", "localhost"})
# waitress blocks a worker that writes past this much unsent output to one client (set in server.py); a
# stream writes at most half of it, so a client that never reads cannot hold a worker past stream_max_s.
OUTBUF_HIGH_WATERMARK: Final = 16 << 20
LIMITS_FROM_ENV: Final = {"max_streams": int, "stream_max_s": float, "max_body_bytes": int}


class Role(Enum):
    """What a bearer token may do; admin can do everything a viewer can."""

    VIEWER = "viewer"
    ADMIN = "admin"

    def allows(self, needed: Role) -> bool:
        return self is Role.ADMIN or needed is Role.VIEWER


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiSettings:
    database_url: str = DEFAULT_DATABASE_URL
    amqp_url: str | None = None  # readiness checks the broker only when set
    tokens: Mapping[str, Role] = field(default_factory=dict, repr=False)
    host: str = "127.0.0.1"
    port: int = 8080
    threads: int = 16  # waitress worker threads; each open event stream holds one
    max_streams: int = 4  # open event streams at most (at most half the threads); more are refused with 503
    stream_poll_s: float = 0.5
    stream_max_s: float = 300.0  # a stream ends after this; EventSource reconnects with Last-Event-ID
    stream_max_bytes: int = 4 << 20  # a stream ends after writing this much (the client resumes likewise)
    max_body_bytes: int = 1 << 20  # a larger request body is refused with 413

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError("port", f"must be in [0, 65535], got {self.port}")
        if self.threads < 2:
            raise ConfigError("threads", f"must be at least 2, got {self.threads}")
        if not 1 <= self.max_streams <= self.threads // 2:
            detail = f"must be in [1, threads // 2 = {self.threads // 2}], got {self.max_streams}"
            raise ConfigError("max_streams", detail)
        if self.stream_poll_s <= 0 or not 0 < self.stream_max_s <= 86_400:
            raise ConfigError("stream_max_s", "stream timings must be positive (and at most a day)")
        if not 1024 <= self.stream_max_bytes <= OUTBUF_HIGH_WATERMARK // 2:
            raise ConfigError("stream_max_bytes", f"must be in [1024, {OUTBUF_HIGH_WATERMARK // 2}]")
        if not 1024 <= self.max_body_bytes <= 1 << 30:
            raise ConfigError("max_body_bytes", f"must be in [1024, {1 << 30}], got {self.max_body_bytes}")

    @property
    def auth_enabled(self) -> bool:
        return bool(self.tokens)

    @property
    def loopback_only(self) -> bool:
        return self.host in LOOPBACK_HOSTS

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> ApiSettings:
        """Read FEDBUS_DATABASE_URL, FEDBUS_AMQP_URL, FEDBUS_API_TOKENS[_FILE]; `overrides` win (flags)."""
        env = os.environ if env is None else env
        values: dict[str, object] = {
            "database_url": env.get(f"{PREFIX}DATABASE_URL") or DEFAULT_DATABASE_URL,
            "amqp_url": env.get(f"{PREFIX}AMQP_URL") or None,
            "tokens": parse_tokens(_tokens_text(env)),
        }
        values |= _limits(env)
        values |= {name: value for name, value in overrides.items() if value is not None}
        return cls(**values)  # type: ignore[arg-type]


def _limits(env: Mapping[str, str]) -> dict[str, object]:
    """FEDBUS_API_<LIMIT> for each of LIMITS_FROM_ENV that is set; ConfigError naming the variable if malformed."""
    values: dict[str, object] = {}
    for name, kind in LIMITS_FROM_ENV.items():
        variable = f"{PREFIX}API_{name.upper()}"
        text = env.get(variable)
        if text:
            try:
                values[name] = kind(text)
            except ValueError as exc:
                raise ConfigError(variable, f"must be a number, got {text!r:.40}") from exc
    return values


def _tokens_text(env: Mapping[str, str]) -> str:
    file_name = env.get(f"{PREFIX}API_TOKENS_FILE")
    if file_name:
        try:
            return Path(file_name).read_text()
        except OSError as exc:
            raise ConfigError(f"{PREFIX}API_TOKENS_FILE", f"cannot read {file_name}: {exc.strerror}") from exc
    return env.get(f"{PREFIX}API_TOKENS", "")


def parse_tokens(text: str) -> dict[str, Role]:
    """Parse "token:role,token:role" (commas or newlines); the error never repeats a token."""
    tokens: dict[str, Role] = {}
    for number, item in enumerate(text.replace("\n", ",").split(","), start=1):
        item = item.strip()
        if not item:
            continue
        token, sep, role = item.rpartition(":")
        if not sep or not token.strip():
            raise ConfigError(f"{PREFIX}API_TOKENS", f"entry {number} is not token:role")
        try:
            tokens[token.strip()] = Role(role.strip().lower())
        except ValueError as exc:
            raise ConfigError(f"{PREFIX}API_TOKENS", f"entry {number}: role must be viewer or admin") from exc
    return tokens


__all__ = ["LOOPBACK_HOSTS", "OUTBUF_HIGH_WATERMARK", "ApiSettings", "Role", "parse_tokens"]
