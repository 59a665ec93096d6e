"""Bearer tokens with roles: reads need viewer (or admin), management needs admin.

401 without a token or with an unknown one, 403 for the wrong role. With no tokens configured reads are
open and management is off. Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from flask import request

from services.api.errors import Forbidden, Unauthorized
from services.api.settings import Role


class TokenGate:
    """Decides whether the current request may go on; raises Unauthorized or Forbidden otherwise."""

    def __init__(self, tokens: Mapping[str, Role]) -> None:
        self._tokens = [(token.encode(), role) for token, role in tokens.items()]

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def role_of(self, token: str) -> Role | None:
        found: Role | None = None
        given = token.encode()
        for known, role in self._tokens:  # no early exit: the time taken does not depend on the match
            if hmac.compare_digest(known, given):
                found = role
        return found

    def check(self, needed: Role, *, query_token: bool = False) -> None:
        """Raise unless the request's bearer token (or ?token= where allowed) grants `needed`."""
        if not self.enabled:
            if needed is Role.ADMIN:
                raise Forbidden("management is disabled: no API tokens are configured (set FEDBUS_API_TOKENS)")
            return
        token = _bearer(request.headers.get("Authorization", ""))
        if token is None and query_token:
            token = request.args.get("token") or None
        if token is None:
            raise Unauthorized("a bearer token is required")
        role = self.role_of(token)
        if role is None:
            raise Unauthorized("the bearer token is not valid")
        if not role.allows(needed):
            raise Forbidden(f"this needs the {needed.value} role")


def _bearer(header: str) -> str | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


__all__ = ["TokenGate"]
