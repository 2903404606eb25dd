"""API keys: `sl_<key id>_<secret>`. Only sha256(secret) is stored; comparison is constant-time."""
from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass

import asyncpg

SCOPES = ("appointments:read", "appointments:write", "slots:read", "slots:write", "settings:write")


@dataclass(frozen=True)
class Principal:
    key_id: str
    org_id: str
    scopes: frozenset[str]


def parse_scopes(text: str) -> list[str]:
    if text.strip() == "all":
        return list(SCOPES)
    scopes = [s.strip() for s in text.split(",") if s.strip()]
    unknown = set(scopes) - set(SCOPES)
    if unknown or not scopes:
        raise ValueError(f"unknown scope(s) {sorted(unknown)}; choose from {', '.join(SCOPES)} or 'all'")
    return scopes


async def create_key(conn: asyncpg.Connection, org_id: str, scopes: list[str], name: str | None = None) -> str:
    if not await conn.fetchval("SELECT 1 FROM orgs WHERE org_id = $1", uuid.UUID(org_id)):
        raise LookupError(f"organization {org_id} not found")
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    await conn.execute("INSERT INTO api_keys (key_id, org_id, secret_hash, scopes, name) VALUES ($1, $2, $3, $4, $5)",
                       key_id, uuid.UUID(org_id), hashlib.sha256(secret.encode()).digest(), scopes, name)
    return f"sl_{key_id}_{secret}"


_NO_SUCH_KEY = hashlib.sha256(b"no such key").digest()


class KeyRing:
    """Verifies bearer keys. Only whole keys that verified are cached (by their hash, for `ttl`: revocations
    apply within it), so a wrong secret costs the same one lookup whether its key id exists or not: key ids
    cannot be probed by timing."""

    def __init__(self, pool: asyncpg.Pool, ttl: float = 30.0):
        self.pool = pool
        self.ttl = ttl
        self._cache: dict[bytes, tuple[float, Principal]] = {}

    async def verify(self, token: str) -> Principal | None:
        if not token.isascii():
            return None
        parts = token.split("_", 2)
        if len(parts) != 3 or parts[0] != "sl" or not 0 < len(parts[1]) <= 64:
            return None
        _, key_id, secret = parts
        whole = hashlib.sha256(token.encode()).digest()
        cached = self._cache.get(whole)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        digest = hashlib.sha256(secret.encode()).digest()
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow("SELECT org_id, secret_hash, scopes FROM api_keys WHERE key_id = $1"
                                      " AND revoked_at IS NULL", key_id)
        stored = bytes(row["secret_hash"]) if row is not None else _NO_SUCH_KEY
        if not hmac.compare_digest(digest, stored) or row is None:
            return None
        principal = Principal(key_id, str(row["org_id"]), frozenset(row["scopes"]))
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[whole] = (time.monotonic() + self.ttl, principal)
        return principal
