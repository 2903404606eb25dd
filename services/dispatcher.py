"""The webhook dispatcher (DESIGN §9): the event log, as signed HTTP deliveries to each org's endpoints.

Two steps, each its own loop and its own transaction:
- fan-out reads the log with the gap-safe reader and writes one delivery per (event, subscribed endpoint), its
  checkpoint in the same transaction, so no event is skipped or queued twice;
- sending posts the due deliveries and records every attempt. Per endpoint and appointment, only the oldest
  pending delivery is sent, so one appointment's events arrive in log order. An attempt is recorded in the
  transaction that sent it: a dispatcher killed mid-delivery sends it again after a restart, with the same
  `webhook-id` (at-least-once; receivers dedupe on it).
An advisory lock per step lets one dispatcher of a deployment do each at a time.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

import aiohttp
import asyncpg
import orjson
from prometheus_client import Counter, Gauge, Histogram

from domain.errors import DomainError
from projections.base import recordset
from services.aio import cancel_all
from services.loops import forever
from services.relay import appointment_id_of, cloud_event
from services.settings import Settings
from services.store.eventstore import EventStore, load_checkpoint, save_checkpoint
from services.store.waker import LogWaker, wait_flag
from services.webhooks import Subscriptions, check_url, signature, wants

CHECKPOINT = "webhooks"
ATTEMPTS = Counter("slotledger_webhook_attempts_total", "Webhook delivery attempts by outcome", ["outcome"])
BACKLOG = Gauge("slotledger_webhook_backlog", "Webhook deliveries pending (at the last send step)")
LAG = Histogram("slotledger_webhook_delivery_lag_seconds", "From an event's commit to its delivery's 2xx",
                buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600))

_DELIVERIES = ("INSERT INTO webhook_deliveries (webhook_id, event_id, event_type, ordering_key, payload, status,"
               " next_attempt_at) SELECT webhook_id, event_id, event_type, ordering_key, payload, 'pending', now()"
               " FROM " + recordset("webhook_id text, event_id uuid, event_type text, ordering_key text,"
                                    " payload jsonb") + " ON CONFLICT (webhook_id, event_id) DO NOTHING")
# The head of each (endpoint, appointment) chain, if due: a later delivery waits for the earlier to end.
_DUE = """
SELECT d.delivery_id, d.webhook_id, d.event_id, d.payload, d.attempts, d.created_at
FROM webhook_deliveries d JOIN webhooks w USING (webhook_id)
WHERE d.status = 'pending' AND d.next_attempt_at <= $1 AND w.status = 'enabled'
  AND NOT EXISTS (SELECT 1 FROM webhook_deliveries e WHERE e.webhook_id = d.webhook_id
                  AND e.ordering_key = d.ordering_key AND e.status = 'pending' AND e.delivery_id < d.delivery_id)
ORDER BY d.delivery_id LIMIT $2"""
_ATTEMPTS = ("INSERT INTO webhook_attempts SELECT * FROM "
             + recordset("delivery_id bigint, attempt int, at timestamptz, status_code int, duration_ms int,"
                         " error text"))
_OUTCOMES = ("UPDATE webhook_deliveries d SET status = r.status, attempts = r.attempt,"
             " next_attempt_at = r.next_attempt_at, last_status_code = r.status_code, last_error = r.error,"
             " delivered_at = r.delivered_at FROM "
             + recordset("delivery_id bigint, status text, attempt int, next_attempt_at timestamptz,"
                         " status_code int, error text, delivered_at timestamptz", alias="r")
             + " WHERE d.delivery_id = r.delivery_id")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass
class Attempt:
    delivery_id: int
    webhook_id: str
    attempt: int
    at: dt.datetime
    status_code: int | None
    duration_ms: int
    error: str | None
    created_at: dt.datetime
    event_time: str | None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass
class Dispatcher:
    settings: Settings
    pool: asyncpg.Pool
    store: EventStore
    waker: LogWaker
    subscriptions: Subscriptions
    clock: Callable[[], dt.datetime] = utcnow
    batch_size: int = 500
    _session: aiohttp.ClientSession | None = None
    _tasks: list[asyncio.Task] = field(default_factory=list)
    _queued: asyncio.Event = field(default_factory=asyncio.Event)  # fan-out wrote deliveries: send now

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.settings.webhook_timeout_seconds),
            connector=aiohttp.TCPConnector(limit=100, limit_per_host=10))
        self._tasks = [asyncio.create_task(self._fan_out_loop(), name="webhooks-fan-out"),
                       asyncio.create_task(self._send_loop(), name="webhooks-send")]

    async def stop(self) -> None:
        await cancel_all(self._tasks)
        if self._session is not None:
            await self._session.close()

    # -- fan-out ------------------------------------------------------------------------------------------
    async def _fan_out_loop(self) -> None:
        flag = self.waker.subscribe()
        await forever("webhooks-fan-out", self.fan_out,
                      lambda: wait_flag(flag, self.settings.poll_interval_seconds))

    async def fan_out(self) -> int:
        """One batch of the log into deliveries; returns how many events it read."""
        async with self.pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", zlib.crc32(b"webhooks-fan-out")):
                return 0
            batch = await self.store.read_log(await load_checkpoint(conn, CHECKPOINT), 2000, conn)
            if not batch:
                return 0
            orgs = list({e.org_id for e in batch if e.org_id})
            hooks: dict[Any, list[asyncpg.Record]] = {}
            for hook in await conn.fetch("SELECT webhook_id, org_id, event_types, created_at FROM webhooks"
                                         " WHERE org_id = ANY($1::uuid[]) AND status = 'enabled'", orgs):
                hooks.setdefault(hook["org_id"], []).append(hook)
            # An endpoint gets the events from its creation on, however far behind this step runs.
            rows = [(hook["webhook_id"], e.event_id, e.type, appointment_id_of(e.data) or e.stream_id,
                     cloud_event(e))
                    for e in batch for hook in hooks.get(e.org_id, ())
                    if e.recorded_at >= hook["created_at"] and wants(hook["event_types"], e.type)]
            if rows:
                await conn.execute(_DELIVERIES, rows)
            await save_checkpoint(conn, CHECKPOINT, batch[-1].log_position)
        if rows:
            self._queued.set()
        return len(batch)

    # -- sending ------------------------------------------------------------------------------------------
    async def _send_loop(self) -> None:
        # Woken by this process's fan-out; the poll finds retries coming due and another dispatcher's deliveries.
        await forever("webhooks-send", self.send_due,
                      lambda: wait_flag(self._queued, min(self.settings.poll_interval_seconds, 0.2)))

    async def send_due(self) -> int:
        """Send the due head of every chain once; returns how many attempts were made."""
        now = self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", zlib.crc32(b"webhooks-send")):
                return 0
            due = await conn.fetch(_DUE, now, self.batch_size)
            BACKLOG.set(await conn.fetchval("SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'"))
            if not due:
                return 0
            hooks = {h["webhook_id"]: h for h in await conn.fetch(
                "SELECT webhook_id, url, secret, previous_secret, previous_valid_until, failing_since FROM webhooks"
                " WHERE webhook_id = ANY($1::text[])", list({d["webhook_id"] for d in due}))}
            attempts = await asyncio.gather(*(self._attempt(hooks[d["webhook_id"]], d, now) for d in due))
            await self._record(conn, attempts, hooks, now)
        return len(attempts)

    async def _attempt(self, hook: asyncpg.Record, delivery: asyncpg.Record, now: dt.datetime) -> Attempt:
        payload = delivery["payload"]
        body = orjson.dumps(payload).decode()
        event_id = str(delivery["event_id"])
        started = time.perf_counter()
        code = error = None
        try:
            await check_url(hook["url"], self.settings.webhooks_allow_private)
            signatures = [signature(s, event_id, now, body) for s in await self.subscriptions.secrets(hook, now)]
            headers = {"webhook-id": event_id, "webhook-timestamp": str(int(now.timestamp())),
                       "webhook-signature": " ".join(signatures), "content-type": "application/json",
                       "user-agent": "slotledger-webhooks/1"}
            async with self._session.post(hook["url"], data=body.encode(), headers=headers,
                                          allow_redirects=False) as response:
                code = response.status
                await response.content.read(4096)
        except DomainError as exc:
            error = f"refused: {exc.details.get('url', exc.message)}"
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:300] or type(exc).__name__
        return Attempt(delivery["delivery_id"], delivery["webhook_id"], delivery["attempts"] + 1, now, code,
                       int((time.perf_counter() - started) * 1000), error, delivery["created_at"],
                       payload.get("time"))

    def _retry_at(self, attempt: Attempt) -> dt.datetime | None:
        """Exponential backoff with full jitter, for `webhook_retry_hours` after the delivery was queued."""
        s = self.settings
        if attempt.at - attempt.created_at >= dt.timedelta(hours=s.webhook_retry_hours):
            return None
        ceiling = min(s.webhook_retry_base_seconds * 2 ** (attempt.attempt - 1), s.webhook_retry_max_seconds)
        return attempt.at + dt.timedelta(seconds=random.uniform(ceiling / 2, ceiling))

    async def _record(self, conn: asyncpg.Connection, attempts: list[Attempt], hooks: dict, now: dt.datetime) -> None:
        outcomes, gone, succeeded, failed = [], set(), set(), set()
        for a in attempts:
            if a.ok:
                outcomes.append((a.delivery_id, "delivered", a.attempt, None, a.status_code, None, a.at))
                succeeded.add(a.webhook_id)
                ATTEMPTS.labels("delivered").inc()
                if a.event_time:
                    LAG.observe((self.clock() - dt.datetime.fromisoformat(a.event_time)).total_seconds())
                continue
            failed.add(a.webhook_id)
            if a.status_code == 410:  # the receiver says it is gone: stop (the delivery waits, pending)
                gone.add(a.webhook_id)
                outcomes.append((a.delivery_id, "pending", a.attempt, now, 410, "410 Gone: endpoint disabled", None))
                ATTEMPTS.labels("gone").inc()
                continue
            retry = self._retry_at(a)
            outcomes.append((a.delivery_id, "pending" if retry else "failed", a.attempt, retry, a.status_code,
                             a.error or f"HTTP {a.status_code}", None))
            ATTEMPTS.labels("retrying" if retry else "failed").inc()
        await conn.execute(_ATTEMPTS, [(a.delivery_id, a.attempt, a.at, a.status_code, a.duration_ms, a.error)
                                       for a in attempts])
        await conn.execute(_OUTCOMES, outcomes)
        if succeeded:
            await conn.execute("UPDATE webhooks SET failing_since = NULL WHERE webhook_id = ANY($1::text[])"
                               " AND failing_since IS NOT NULL", list(succeeded))
        failing = sorted(failed - succeeded)
        if failing:
            await conn.execute("UPDATE webhooks SET failing_since = $2 WHERE webhook_id = ANY($1::text[])"
                               " AND failing_since IS NULL", failing, now)
            await conn.execute(
                "UPDATE webhooks SET status = 'disabled', updated_at = now(), disabled_reason = 'failing for "
                f"{self.settings.webhook_disable_after_hours:g} hours' WHERE webhook_id = ANY($1::text[])"
                " AND status = 'enabled' AND failing_since <= $2::timestamptz - $3::interval", failing, now,
                dt.timedelta(hours=self.settings.webhook_disable_after_hours))
        if gone:
            await conn.execute("UPDATE webhooks SET status = 'disabled', updated_at = now(),"
                               " disabled_reason = 'the endpoint answered 410 Gone'"
                               " WHERE webhook_id = ANY($1::text[])", sorted(gone))


async def queue_test_event(conn: asyncpg.Connection, org_id: str, webhook_id: str, now: dt.datetime) -> int:
    """A `slotledger.webhook.test` delivery to one endpoint, sent like any other."""
    event_id = uuid.uuid4()
    payload = {"specversion": "1.0", "id": str(event_id), "type": "slotledger.webhook.test",
               "source": f"/slotledger/orgs/{org_id}", "subject": webhook_id, "time": now.isoformat(),
               "datacontenttype": "application/json", "data": {"webhook_id": webhook_id}, "orgid": org_id}
    return await conn.fetchval(
        "INSERT INTO webhook_deliveries (webhook_id, event_id, event_type, ordering_key, payload, status,"
        " next_attempt_at) VALUES ($1, $2, 'webhook.test', $3, $4, 'pending', $5) RETURNING delivery_id",
        webhook_id, event_id, f"test:{event_id}", payload, now)
