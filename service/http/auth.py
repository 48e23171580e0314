"""Bearer-key authentication with three nested roles: predict < learn < admin."""

from __future__ import annotations

import hashlib
import hmac

from service.settings import ROLES


class AuthError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


class KeyRing:
    def __init__(self, keys: dict[str, str], insecure: bool = False) -> None:
        self._keys = keys  # key -> role
        self.insecure = insecure and not keys

    def authorise(self, header: str | None, needed: str) -> str:
        """The caller's actor id (role and key fingerprint, never the key) or AuthError 401/403."""
        if self.insecure:
            return "admin:insecure"
        scheme, _, given = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():  # schemes are case-insensitive (RFC 7235)
            raise AuthError(401, "send 'Authorization: Bearer <key>'")
        given = given.strip()
        raw = given.encode("utf-8", "surrogateescape")
        role = next((r for k, r in self._keys.items() if hmac.compare_digest(k.encode(), raw)), None)
        if role is None:
            raise AuthError(401, "unknown API key")
        if ROLES.index(role) < ROLES.index(needed):
            raise AuthError(403, f"this key has role '{role}'; this operation needs '{needed}'")
        return f"{role}:{hashlib.sha256(raw).hexdigest()[:8]}"
