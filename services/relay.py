"""The events relay: every event of the log, in log order, to <prefix>.events as a CloudEvents 1.0 JSON message.

It reads with the gap-safe reader and moves its checkpoint only after the broker has acknowledged the whole
batch: at-least-once, so after a crash the tail of a batch may be published again (consumers dedupe on `id`),
and nothing is ever skipped. Several relays may run; an advisory lock lets one publish at a time.
"""
from __future__ import annotations

import asyncio
import zlib
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer
from prometheus_client import Counter

from schemas.events import cloud_type
from schemas.export import schema_url
from services.aio import cancel_all
from services.loops import health
from services.produce import produce
from services.settings import Settings
from services.store.eventstore import EventStore, LogWaker, StoredEvent, load_checkpoint, save_checkpoint, wait_flag

CHECKPOINT = "relay:events"
RELAYED = Counter("slotledger_relay_events_total", "Events published to the events topic")


def appointment_id_of(data: dict[str, Any]) -> str | None:
    return data.get("appointment_id") or (data.get("appointment") or {}).get("appointment_id")


def cloud_event(event: StoredEvent) -> dict[str, Any]:
    """The CloudEvents 1.0 structured-mode body of one stored event (schema: schemas/json/cloudevent)."""
    org = str(event.org_id) if event.org_id else None
    kind = cloud_type(event.type, event.schema_version)
    body = {
        "specversion": "1.0",
        "id": str(event.event_id),
        "type": kind,
        "source": f"/slotledger/orgs/{org}" if org else "/slotledger",
        "subject": appointment_id_of(event.data) or event.stream_id,
        "time": event.recorded_at.isoformat(),
        "datacontenttype": "application/json",
        "dataschema": schema_url(f"events/{kind}.schema.json"),
        "data": event.data,
        "position": event.position,
        "streamid": event.stream_id,
        "streamversion": event.stream_version,
        "orgid": org,
    }
    for name in ("command_id", "request_id"):
        if event.metadata.get(name):
            body[name.replace("_", "")] = event.metadata[name]
    return body


def message_key(event: StoredEvent) -> bytes:
    """An appointment's events share a key (so a partition, so their order), even across window-days."""
    return (appointment_id_of(event.data) or event.stream_id).encode()


@dataclass
class Relay:
    settings: Settings
    pool: asyncpg.Pool
    store: EventStore
    waker: LogWaker
    _producer: AIOKafkaProducer | None = None
    _task: asyncio.Task | None = None

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap, enable_idempotence=True,
                                          acks="all", linger_ms=0, max_batch_size=1_000_000)
        await self._producer.start()
        self._task = asyncio.create_task(self._run(), name="relay")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_all([self._task])
        if self._producer is not None:
            await self._producer.stop()

    async def _run(self) -> None:
        flag = self.waker.subscribe()
        loop = health("relay")
        while True:
            try:
                relayed = await self.relay_batch()
                loop.ok()
                if relayed:
                    continue
            except Exception as exc:  # never dies: backs off and resumes from its checkpoint
                await loop.failed(exc)
                continue
            await wait_flag(flag, self.settings.poll_interval_seconds)
            await asyncio.sleep(0.005)  # let a burst of commits land: one batch, one produce round

    async def lag(self) -> int:
        """How many events the log holds past the relay's checkpoint."""
        async with self.pool.acquire() as conn:
            return await conn.fetchval(
                "SELECT count(*) FROM events WHERE global_position > coalesce((SELECT global_position FROM"
                " checkpoints WHERE name = $1), 0)", CHECKPOINT, timeout=2)

    async def relay_batch(self) -> int:
        """Publish the next batch and move the checkpoint; returns how many events were published."""
        topic = self.settings.topic("events")
        async with self.pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", zlib.crc32(CHECKPOINT.encode())):
                return 0  # another relay holds the log; wait for the next wake-up
            after = await load_checkpoint(conn, CHECKPOINT)
            batch = await self.store.read_log(after, self.settings.relay_batch, conn)
            if not batch:
                return 0
            await produce(self._producer, topic, ((message_key(e), orjson.dumps(cloud_event(e)), []) for e in batch))
            await save_checkpoint(conn, CHECKPOINT, batch[-1].log_position)
        RELAYED.inc(len(batch))
        return len(batch)
