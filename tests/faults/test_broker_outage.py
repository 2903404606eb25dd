"""The Kafka broker crashes (SIGKILL) and comes back while commands arrive over Kafka and HTTP: HTTP keeps
booking (events are in PostgreSQL), the relay catches up so every event reaches the events topic, and every
Kafka command is answered, with one result per command_id (a batch redelivered after the crash may repeat its
results: the same stored result, never a second effect)."""
from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from services.aio import stop_consumer
from services.local.kafka import LocalKafka
from services.local.ports import free_port
from services.runtime import Runtime
from services.settings import Settings
from tests.builders import create_body
from tests.e2e.conftest import local_at, new_org, setup_clinic
from tests.faults.invariants import violations
from tests.e2e.kafka import command, encoded, publish, read_topic, results_by_command

COMMANDS = 600


@pytest.fixture
async def own_broker(work_dir):
    broker = await asyncio.to_thread(LocalKafka(work_dir / f"kafka-outage-{os.getpid()}").start)
    yield broker
    await asyncio.to_thread(broker.remove)


async def test_broker_killed_and_restarted_under_load(pg_url, schema, own_broker, topic_prefix):
    broker = own_broker
    settings = Settings(database_url=pg_url, database_schema=schema, http_port=0, kafka_bootstrap=broker.bootstrap,
                        topic_prefix=topic_prefix, poll_interval_seconds=0.2, auth_failures_per_minute=10**6)
    rt = Runtime(settings)
    await rt.start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
            api = await setup_clinic(await new_org(rt, session), max_slots=200)
            commands = [command(api.org_id, "create_appointment",
                                create_body(local_at(api, 2 + i % 20, "09:30"), f"+1999{i:06d}"))
                        for i in range(COMMANDS)]
            await publish(broker.bootstrap, settings.topic("commands"),
                          [encoded(c, f"day-{i % 20}") for i, c in enumerate(commands[:COMMANDS // 2])])
            http_outcomes: Counter = Counter()
            acknowledged: list[str] = []

            async def http_load(seconds: float) -> None:
                started, n = time.monotonic(), 0
                while time.monotonic() - started < seconds:
                    n += 1
                    status, b = await api.post("/v1/appointments", create_body(
                        local_at(api, 2 + n % 20, "17:30"), f"+1998{n:06d}"))
                    http_outcomes[status] += 1
                    if status == 201:
                        acknowledged.append(b["appointment_id"])
                    await asyncio.sleep(0.01)

            load = asyncio.create_task(http_load(9))
            await asyncio.sleep(1)
            broker.kill()
            down_at = time.monotonic()
            await asyncio.sleep(4)
            during = http_outcomes[201]
            await asyncio.to_thread(broker.start, 90.0, False)  # the same port and data
            back_after = time.monotonic() - down_at
            await load
            await publish(broker.bootstrap, settings.topic("commands"),
                          [encoded(c, f"day-{i % 20}") for i, c in enumerate(commands[COMMANDS // 2:])])

            wanted = {c["command_id"] for c in commands}
            records = await read_topic(broker.bootstrap, settings.topic("command-results"),
                                       lambda recs: wanted <= set(results_by_command(recs)), 120)
            results = results_by_command(records)
            assert wanted <= set(results), f"{len(wanted - set(results))} commands got no result"
            repeated = {cid: rs for cid, rs in results.items() if cid in wanted and len(rs) > 1}
            assert all(all(r == rs[0] for r in rs) for rs in repeated.values())  # a repeat is the same result
            assert Counter(results[cid][0]["status"] for cid in wanted) == {201: COMMANDS}

            async with rt.pool.acquire() as conn:
                logged = {str(r["event_id"]) for r in await conn.fetch("SELECT event_id FROM events")}
                booked = await conn.fetchval("SELECT count(*) FROM events WHERE event_type = 'appointment.booked'")
                broken = await violations(conn, 200)
            assert not any(broken.values()), broken
            events = await read_topic(broker.bootstrap, settings.topic("events"),
                                      lambda recs: logged <= {json.loads(r.value)["id"] for r in recs}, 120)
            relayed = Counter(json.loads(r.value)["id"] for r in events)
            print(f"\nbroker SIGKILL for {back_after:.1f}s: HTTP {dict(http_outcomes)} ({during} bookings while it was"
                  f" down); {len(wanted)} Kafka commands, {len(repeated)} results repeated; {len(logged)} events in"
                  f" the log, {len(set(relayed) & logged)} on the events topic, "
                  f"{sum(n - 1 for n in relayed.values())} duplicates")
            assert during > 0 and 500 not in http_outcomes  # HTTP kept booking while the broker was gone
            assert logged <= set(relayed)  # 0 missing from the events topic
            assert booked == COMMANDS + len(acknowledged)  # one effect per command, one per 201
    finally:
        await rt.stop()


async def test_a_consumer_stopped_while_its_broker_is_down_stops_cleanly(own_broker, topic_prefix):
    """aiokafka's stop() lets out a CancelledError of its own fetch task when that task is backing off from a
    broker that is not there (aio-libs/aiokafka#647): `slotledger up` exited 1 on Ctrl-C just after restarting
    its broker. A long backoff makes the window certain here; stop_consumer must return, and quickly."""
    topic = f"{topic_prefix}.stop-while-down"
    await publish(own_broker.bootstrap, topic, [encoded({"n": 1}, "k")])
    consumer = AIOKafkaConsumer(bootstrap_servers=own_broker.bootstrap, retry_backoff_ms=30_000,
                                request_timeout_ms=5_000, auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, 0)])
        assert await consumer.getmany(timeout_ms=10_000)  # fetching from the broker
        own_broker.kill()
        await asyncio.sleep(3)  # the next fetch has failed and its task backs off for 30 s
    finally:
        started = time.monotonic()
        await stop_consumer(consumer)
    assert time.monotonic() - started < 10


async def test_the_service_starts_while_its_broker_is_down_and_takes_it_up_when_it_comes(pg_url, schema, work_dir,
                                                                                        topic_prefix):
    """A service started while its broker is down serves HTTP at once (bookings go to PostgreSQL), says in /readyz
    that Kafka is missing, and once the broker comes up starts its relay and ingestor: what was booked meanwhile
    reaches the events topic, and Kafka commands are answered."""
    broker = LocalKafka(work_dir / f"kafka-late-{os.getpid()}", port=free_port())  # not started yet
    settings = Settings(database_url=pg_url, database_schema=schema, http_port=0, kafka_bootstrap=broker.bootstrap,
                        topic_prefix=topic_prefix, poll_interval_seconds=0.2, auth_failures_per_minute=10**6)
    rt = Runtime(settings, components=("gateway", "projectors", "ingestor", "relay"))
    await asyncio.wait_for(rt.start(), 30)
    try:
        assert rt.relay is None and not rt.ingestors
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
            api = await setup_clinic(await new_org(rt, session))
            status, booked = await api.post("/v1/appointments", create_body(local_at(api, 2, "09:30"), "+19995551001"))
            assert status == 201, booked
            status, ready = await api.get("/readyz")
            assert status == 503 and not ready["checks"]["kafka"]["ok"], ready
            assert not ready["checks"]["loop:kafka-connect"]["ok"], ready

            await asyncio.to_thread(broker.start)
            create = command(api.org_id, "create_appointment", create_body(local_at(api, 3, "09:30"), "+19995551002"))
            await publish(broker.bootstrap, settings.topic("commands"), [encoded(create, "day-3")])
            records = await read_topic(broker.bootstrap, settings.topic("command-results"),
                                       lambda recs: create["command_id"] in results_by_command(recs), 90)
            results = results_by_command(records).get(create["command_id"])
            assert results and results[0]["status"] == 201, results
            booked_id = booked["data"]["appointment_id"]
            events = await read_topic(broker.bootstrap, settings.topic("events"), lambda recs: any(
                json.loads(r.value)["subject"] == booked_id for r in recs), 90)
            assert any(json.loads(r.value)["type"].startswith("slotledger.appointment.booked") for r in events
                       if json.loads(r.value)["subject"] == booked_id)
            deadline = asyncio.get_running_loop().time() + 60
            while (status := (await api.get("/readyz"))[0]) != 200 and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.5)
            assert status == 200
    finally:
        await rt.stop()
        await asyncio.to_thread(broker.remove)
