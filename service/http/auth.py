"""Bearer-key authentication with three nested roles: predict < learn < admin."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from service.settings import ROLES, Settings

SECRET_FILE = "audit-secret"  # under the data directory, when ENGRAM_AUDIT_SECRET is not set


def audit_secret(settings: Settings) -> bytes:
    """The key of the audit's key fingerprints: ENGRAM_AUDIT_SECRET, else a random secret made once for this data
    directory and kept in ``<data_dir>/audit-secret`` (mode 0600; created atomically, so processes starting together
    agree on it)."""
    if settings.audit_secret:
        return settings.audit_secret.encode()
    path = settings.data_dir.resolve() / SECRET_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
                f.flush()
                os.fsync(f.fileno())
            with contextlib.suppress(FileExistsError):  # another process made it first: theirs is kept
                os.link(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return path.read_text().strip().encode()


class AuthError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


class KeyRing:
    def __init__(self, keys: dict[str, str], insecure: bool = False, secret: bytes = b"") -> None:
        self._keys = keys  # key -> role
        self.insecure = insecure and not keys
        self._secret = secret  # keys the fingerprints: without it, a fingerprint would confirm a guessed key offline

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
        return f"{role}:{self.fingerprint(raw)}"

    def fingerprint(self, key: bytes) -> str:
        """HMAC-SHA256 of the key under the server's secret, 64 bits in hex: tells keys apart in the audit, and
        reveals nothing about a key to someone without the secret."""
        return hmac.new(self._secret, key, hashlib.sha256).hexdigest()[:16]
