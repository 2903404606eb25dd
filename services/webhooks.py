"""Webhook subscriptions (DESIGN §9): endpoints per org, their secrets, and what an endpoint is allowed to be.

Secrets are `whsec_` + base64 (the Standard Webhooks format), shown once. Signing needs the secret itself, so it
is stored encrypted (Fernet), with SLOTLEDGER_WEBHOOK_SECRETS_KEY, or else a key kept in the database. A
rotation keeps the previous secret valid for 24 hours: deliveries then carry both signatures.
"""
from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ipaddress
import secrets
import socket
import uuid
from typing import Any
from urllib.parse import urlsplit

import asyncpg
from cryptography.fernet import Fernet
from standardwebhooks.webhooks import Webhook

from domain.errors import DomainError, not_found, validation

ROTATION_OVERLAP = dt.timedelta(hours=24)
EVENT_FAMILIES = ("org", "service", "branch", "window", "window_day", "doctor", "patient", "appointment", "hold",
                  "waitlist", "webhook")


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def new_webhook_id() -> str:
    return "wh_" + secrets.token_hex(8)


def signature(secret: str, event_id: str, timestamp: dt.datetime, body: str) -> str:
    """`v1,<base64 HMAC-SHA256>` of `id.timestamp.body`, with the standardwebhooks package itself."""
    return Webhook(secret).sign(event_id, timestamp, body)


def wants(event_types: list[str], event_type: str) -> bool:
    """`*`, an exact type (`appointment.booked`) or a family (`appointment.*`)."""
    return any(t == "*" or t == event_type or (t.endswith(".*") and event_type.startswith(t[:-1]))
               for t in event_types)


def check_event_types(event_types: list[str]) -> None:
    for name in event_types:
        family = name.split(".", 1)[0]
        if name != "*" and (family not in EVENT_FAMILIES or not name.replace("_", "").replace(".", "")
                            .replace("*", "").isalnum()):
            raise validation("event_types", f"'{name}' is not an event type, a family like appointment.* or *")


def _private(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    return not ip.is_global


async def check_url(url: str, allow_private: bool) -> None:
    """https to a public address; http, or a loopback/private/link-local address, only when
    SLOTLEDGER_WEBHOOKS_ALLOW_PRIVATE is set (no SSRF into the clinic's network). Checked when the endpoint is
    registered and again before every delivery (a name may resolve elsewhere later)."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise validation("url", "must be an absolute https URL")
    if parts.username or parts.password:
        raise validation("url", "must not carry credentials")
    try:
        async with asyncio.timeout(5):
            infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, parts.port or 443,
                                                                 type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError, TimeoutError) as exc:
        raise validation("url", f"the host does not resolve ({exc or 'timed out'})") from None
    private = any(_private(info[4][0]) for info in infos)
    if private and not allow_private:
        raise validation("url", "resolves to a private, loopback or link-local address; such endpoints need "
                                "SLOTLEDGER_WEBHOOKS_ALLOW_PRIVATE")
    if parts.scheme == "http" and not (private and allow_private):
        raise validation("url", "must be https (http only to private addresses, with "
                                "SLOTLEDGER_WEBHOOKS_ALLOW_PRIVATE)")


class Vault:
    """Encrypts and decrypts webhook secrets."""

    def __init__(self, pool: asyncpg.Pool, key: str | None):
        self.pool = pool
        self._fernet = Fernet(key.encode()) if key else None

    async def fernet(self) -> Fernet:
        if self._fernet is None:
            async with self.pool.acquire() as conn:
                await conn.execute("INSERT INTO service_keys (name, key) VALUES ('webhook_secrets', $1)"
                                   " ON CONFLICT DO NOTHING", Fernet.generate_key().decode())
                key = await conn.fetchval("SELECT key FROM service_keys WHERE name = 'webhook_secrets'")
            self._fernet = Fernet(key.encode())
        return self._fernet

    async def seal(self, secret: str) -> bytes:
        return (await self.fernet()).encrypt(secret.encode())

    async def open(self, sealed: bytes) -> str:
        return (await self.fernet()).decrypt(bytes(sealed)).decode()


_COLUMNS = ("webhook_id, url, event_types, description, status, disabled_reason, failing_since, created_at,"
            " updated_at, previous_valid_until")


def view(row: asyncpg.Record) -> dict[str, Any]:
    out = dict(row)
    for name in ("failing_since", "created_at", "updated_at", "previous_valid_until"):
        if out.get(name) is not None:
            out[name] = out[name].isoformat()
    return out


class Subscriptions:
    def __init__(self, pool: asyncpg.Pool, vault: Vault, allow_private: bool):
        self.pool = pool
        self.vault = vault
        self.allow_private = allow_private

    async def create(self, org_id: str, url: str, event_types: list[str], description: str | None) -> dict:
        check_event_types(event_types)
        await check_url(url, self.allow_private)
        secret = new_secret()
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(
                f"INSERT INTO webhooks (webhook_id, org_id, url, event_types, description, secret)"
                f" VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_COLUMNS}", new_webhook_id(), uuid.UUID(org_id), url,
                event_types, description, await self.vault.seal(secret))
        return {**view(row), "secret": secret}

    async def list(self, org_id: str) -> list[dict]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(f"SELECT {_COLUMNS} FROM webhooks WHERE org_id = $1 ORDER BY created_at,"
                                    " webhook_id", uuid.UUID(org_id))
        return [view(r) for r in rows]

    async def get(self, org_id: str, webhook_id: str) -> dict:
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM webhooks WHERE org_id = $1 AND webhook_id = $2",
                                      uuid.UUID(org_id), webhook_id)
        if row is None:
            raise not_found("webhook", webhook_id)
        return view(row)

    async def update(self, org_id: str, webhook_id: str, changes: dict[str, Any]) -> dict:
        if not changes:
            raise DomainError("VALIDATION_ERROR", "no valid field to update",
                              {"body": "give url, event_types, description or status"})
        if "event_types" in changes:
            check_event_types(changes["event_types"])
        if "url" in changes:
            await check_url(changes["url"], self.allow_private)
        await self.get(org_id, webhook_id)
        sets = [f"{name} = ${n}" for n, name in enumerate(changes, start=3)]
        if changes.get("status") == "enabled":  # re-enabled by hand: failures count afresh
            sets += ["disabled_reason = NULL", "failing_since = NULL"]
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(
                f"UPDATE webhooks SET {', '.join(sets)}, updated_at = now() WHERE org_id = $1 AND webhook_id = $2"
                f" RETURNING {_COLUMNS}", uuid.UUID(org_id), webhook_id, *changes.values())
        return view(row)

    async def delete(self, org_id: str, webhook_id: str) -> dict:
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(f"DELETE FROM webhooks WHERE org_id = $1 AND webhook_id = $2"
                                      f" RETURNING {_COLUMNS}", uuid.UUID(org_id), webhook_id)
        if row is None:
            raise not_found("webhook", webhook_id)
        return {**view(row), "status": "deleted"}

    async def rotate(self, org_id: str, webhook_id: str) -> dict:
        """A new secret, shown once; the current one stays valid for 24 hours (both signatures are sent)."""
        secret = new_secret()
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(
                f"UPDATE webhooks SET previous_secret = secret, previous_valid_until = now() + $3::interval,"
                f" secret = $4, updated_at = now() WHERE org_id = $1 AND webhook_id = $2 RETURNING {_COLUMNS}",
                uuid.UUID(org_id), webhook_id, ROTATION_OVERLAP, await self.vault.seal(secret))
        if row is None:
            raise not_found("webhook", webhook_id)
        return {**view(row), "secret": secret}

    async def secrets(self, row: asyncpg.Record, now: dt.datetime) -> list[str]:
        """The secrets a delivery is signed with now: the current one, and the previous during the overlap."""
        out = [await self.vault.open(row["secret"])]
        if row["previous_secret"] is not None and row["previous_valid_until"] and now < row["previous_valid_until"]:
            out.append(await self.vault.open(row["previous_secret"]))
        return out
