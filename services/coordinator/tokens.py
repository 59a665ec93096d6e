"""Signed client tokens with expiry: `<client_id>.<expires>.<hmac-sha256>`, checked in constant time."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from contracts.errors import FedbusError


class Unauthenticated(FedbusError):
    """No, a malformed, a forged or an expired token."""


class PermissionDenied(FedbusError):
    """A valid identity acting for another one."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenAuthority:
    secret: bytes
    enrollment_token: str
    ttl_s: float = 7 * 24 * 3600.0

    @classmethod
    def generate(cls, *, enrollment_token: str | None = None) -> TokenAuthority:
        return cls(secret=secrets.token_bytes(32), enrollment_token=enrollment_token or secrets.token_urlsafe(24))

    def issue(self, client_id: str, *, now: float) -> str:
        expires = int(now + self.ttl_s)
        return f"{client_id}.{expires}.{self._sign(client_id, expires)}"

    def verify(self, token: str, *, now: float) -> str:
        """The client id the token was issued to; Unauthenticated otherwise."""
        try:
            client_id, expires_text, signature = token.rsplit(".", 2)
            expires = int(expires_text)
        except ValueError as exc:
            raise Unauthenticated("malformed client token") from exc
        if not hmac.compare_digest(signature, self._sign(client_id, expires)):
            raise Unauthenticated("invalid client token")
        if now > expires:
            raise Unauthenticated("client token expired")
        return client_id

    def check_enrollment(self, token: str) -> None:
        if not hmac.compare_digest(token.encode(), self.enrollment_token.encode()):
            raise Unauthenticated("invalid enrollment token")

    def _sign(self, client_id: str, expires: int) -> str:
        mac = hmac.new(self.secret, f"{client_id}.{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")
