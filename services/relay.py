"""The events relay: every event of the log, in log order, to <prefix>.events as a CloudEvents 1.0 JSON message.

It reads with the gap-safe reader and moves its checkpoint only after the broker has acknowledged the whole
batch: at-least-once, so after a crash the tail of a batch may be published again (consumers dedupe on `id`),
and nothing is ever skipped. Several relays may run; an advisory lock lets one publish at a time.
"""
from __future__ import annotations

import asyncio
import zlib
from dataclasses import dataclass
from datetime import datetime
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
from services.store.eventstore import EventStore, StoredEvent, load_checkpoint, position_of, save_checkpoint
from services.store.waker import LogWaker, wait_flag

CHECKPOINT = "relay:events"
RELAYED = Counter("slotledger_relay_events_total", "Events published to the events topic")


def appointment_id_of(data: dict[str, Any]) -> str | None:
    return data.get("appointment_id") or (data.get("appointment") or {}).get("appointment_id")


def envelope(*, event_id: Any, event_type: str, schema_version: int, org_id: Any, subject: str,
             recorded_at: datetime, data: Any, position: int, stream_id: str, stream_version: int,
             command_id: str | None, request_id: str | None) -> dict[str, Any]:
    """The CloudEvents 1.0 structured-mode body of one event (schema: schemas/json/cloudevent)."""
    org = str(org_id) if org_id else None
    kind = cloud_type(event_type, schema_version)
    body = {
        "specversion": "1.0",
        "id": str(event_id),
        "type": kind,
        "source": f"/slotledger/orgs/{org}" if org else "/slotledger",
        "subject": subject,
        "time": recorded_at.isoformat(),
        "datacontenttype": "application/json",
        "dataschema": schema_url(f"events/{kind}.schema.json"),
        "data": data,
        "position": position,
        "streamid": stream_id,
        "streamversion": stream_version,
        "orgid": org,
    }
    if command_id:
        body["commandid"] = command_id
    if request_id:
        body["requestid"] = request_id
    return body


def cloud_event(event: StoredEvent) -> dict[str, Any]:
    """A stored event's CloudEvent (the webhooks' payload)."""
    return envelope(event_id=event.event_id, event_type=event.type, schema_version=event.schema_version,
                    org_id=event.org_id, subject=appointment_id_of(event.data) or event.stream_id,
                    recorded_at=event.recorded_at, data=event.data, position=event.position,
                    stream_id=event.stream_id, stream_version=event.stream_version,
                    command_id=event.metadata.get("command_id"), request_id=event.metadata.get("request_id"))


def message(row: asyncpg.Record) -> tuple[bytes, bytes]:
    """An event read by EventStore.publish_log as the relay sends it: its key, and its CloudEvent with the data
    spliced in as stored (parsing and re-encoding 1 KB of it per event was most of the relay's work). An
    appointment's events share a key (so a partition, so their order), even across window-days."""
    subject = row["appointment_id"] or row["stream_id"]
    body = envelope(event_id=row["event_id"], event_type=row["event_type"], schema_version=row["schema_version"],
                    org_id=row["org_id"], subject=subject, recorded_at=row["recorded_at"],
                    data=orjson.Fragment(row["data_json"]), position=row["global_position"],
                    stream_id=row["stream_id"], stream_version=row["stream_version"],
                    command_id=row["command_id"], request_id=row["request_id"])
    return subject.encode(), orjson.dumps(body)


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
            batch = await self.store.publish_log(after, self.settings.relay_batch, conn)
            if not batch:
                return 0
            await produce(self._producer, topic, ((*message(row), []) for row in batch))
            await save_checkpoint(conn, CHECKPOINT, position_of(batch[-1]))
        RELAYED.inc(len(batch))
        return len(batch)
