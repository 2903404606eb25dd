"""`slotledger events tail`: a plain consumer of <prefix>.events, one line per event — a starting point for
analytics consumers. It joins no consumer group and commits nothing."""
from __future__ import annotations

import asyncio
import json
import signal
from typing import Any, TextIO

from aiokafka import AIOKafkaConsumer

from services.aio import stop_consumer
from services.settings import Settings

_SUMMARY_FIELDS = ("patient_name", "date", "session", "status", "previous_status", "token", "changes", "reason",
                   "name", "window_id", "max_slots")


def wanted(event_type: str, filters: list[str]) -> bool:
    """`--type appointment.booked` matches slotledger.appointment.booked.v1 (any version); a full type matches
    itself; `appointment` matches every appointment event."""
    if not filters:
        return True
    short = event_type.removeprefix("slotledger.").rsplit(".v", 1)[0]
    return any(f in (event_type, short) or short.startswith(f + ".") for f in filters)


def line(event: dict[str, Any]) -> str:
    data = event.get("data") or {}
    record = data.get("appointment") if isinstance(data.get("appointment"), dict) else data
    summary = {k: record[k] for k in _SUMMARY_FIELDS if k in record and record[k] not in (None, {}, "")}
    return (f"{event.get('time', '?')} #{event.get('position')} {event.get('type')} {event.get('subject')} "
            f"{json.dumps(summary, separators=(',', ':'))}")


async def tail(settings: Settings, from_beginning: bool, types: list[str], limit: int | None, as_json: bool,
               out: TextIO) -> int:
    consumer = AIOKafkaConsumer(settings.topic("events"), bootstrap_servers=settings.kafka_bootstrap, group_id=None,
                                enable_auto_commit=False,
                                auto_offset_reset="earliest" if from_beginning else "latest")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await consumer.start()
    printed = 0
    try:
        while not stop.is_set() and (limit is None or printed < limit):
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    try:
                        event = json.loads(record.value)
                    except (TypeError, ValueError):
                        print(f"(not a CloudEvent at {record.partition}:{record.offset})", file=out, flush=True)
                        continue
                    if not wanted(str(event.get("type")), types):
                        continue
                    print(json.dumps(event) if as_json else line(event), file=out, flush=True)
                    printed += 1
                    if limit is not None and printed >= limit:
                        return 0
    finally:
        await stop_consumer(consumer)
    return 0
