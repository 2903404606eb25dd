"""Helpers for tests that talk to the real broker: publish raw commands, read whole topics, run service parts as
separate processes (so they can be killed for real)."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from typing import Any, Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer


async def publish(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes | None]]) -> None:
    """(key, value) pairs, in order."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, linger_ms=5)
    await producer.start()
    try:
        sends = [await producer.send(topic, value=value, key=key) for key, value in messages]
        await asyncio.gather(*sends)
    finally:
        await producer.stop()


def command(org_id: str, type_: str, payload: dict | None = None, command_id: str | None = None,
            **ids: Any) -> dict:
    body = {"command_id": command_id or str(uuid.uuid4()), "org_id": org_id, "type": type_, **ids}
    if payload is not None:
        body["payload"] = payload
    return body


def encoded(cmd: dict, key: str | None = None) -> tuple[bytes | None, bytes]:
    return (key.encode() if key else None), json.dumps(cmd).encode()


async def read_topic(bootstrap: str, topic: str, until: Callable[[list], bool], timeout: float = 90) -> list:
    """Every record of the topic from the beginning (a fresh consumer group), polling until `until(records)`
    holds or the timeout passes."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", group_id=f"test-reader-{uuid.uuid4()}")
    await consumer.start()
    records: list = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while not until(records) and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            for recs in batch.values():
                records.extend(recs)
    finally:
        await consumer.stop()
    return records


def results_by_command(records: list) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for record in records:
        result = json.loads(record.value)
        out.setdefault(result["command_id"], []).append(result)
    return out


def service_process(components: str, pg_url: str, schema: str, bootstrap: str, prefix: str,
                    **settings: str) -> subprocess.Popen:
    """`slotledger serve --only <components>` as its own process; `settings`: more SLOTLEDGER_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLOTLEDGER_")}
    env.update(SLOTLEDGER_DATABASE_URL=pg_url, SLOTLEDGER_DATABASE_SCHEMA=schema, SLOTLEDGER_KAFKA_BOOTSTRAP=bootstrap,
               SLOTLEDGER_TOPIC_PREFIX=prefix, SLOTLEDGER_LOG_LEVEL="warning", SLOTLEDGER_POLL_INTERVAL_SECONDS="0.2",
               **settings)
    return subprocess.Popen([sys.executable, "-m", "services.cli", "serve", "--only", components], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
