"""The events relay and `slotledger events tail` against a real broker: CloudEvents, order, crash recovery."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

from schemas.events import EVENT_PAYLOADS
from schemas.kafka import CloudEvent
from services.runtime import Runtime
from services.settings import Settings
from tests.e2e.conftest import local_at, new_org, setup_clinic
from tests.e2e.kafka import command, encoded, publish, read_topic, service_process


async def _log(rt: Runtime) -> list[dict]:
    async with rt.pool.acquire() as conn:
        rows = await conn.fetch("SELECT event_id::text, stream_id, event_type, global_position,"
                                " coalesce(data->>'appointment_id', data->'appointment'->>'appointment_id',"
                                " stream_id) AS key FROM events ORDER BY transaction_id, global_position")
    return [dict(r) for r in rows]


def _assert_valid_cloud_event(body: dict) -> None:
    event = CloudEvent.model_validate(body)
    event_type, version = event.type.removeprefix("slotledger.").rsplit(".v", 1)
    EVENT_PAYLOADS[event_type][int(version)].model_validate(event.data)


async def test_http_booking_reaches_the_events_topic_and_kafka_booking_reaches_http(kafka_runtime, http,
                                                                                    kafka_bootstrap):
    rt = kafka_runtime
    api = await setup_clinic(await new_org(rt, http))
    status, body = await api.post("/v1/appointments", {
        "appointment_type": "General Checkup", "appointment_date": local_at(api, 3, "10:00"),
        "patient_name": "Over HTTP", "parent_phone": "+15550001111"}, headers={"X-Request-ID": "req-relay-1"})
    assert status == 201, body
    http_id = body["appointment_id"]

    cmd = command(api.org_id, "create_appointment", {
        "appointment_type": "General Checkup", "appointment_date": local_at(api, 3, "10:30"),
        "patient_name": "Over Kafka", "parent_phone": "+15550002222"})
    await publish(kafka_bootstrap, rt.settings.topic("commands"), [encoded(cmd, "route")])
    results = await read_topic(kafka_bootstrap, rt.settings.topic("command-results"), lambda r: len(r) >= 1, 60)
    [result] = [json.loads(r.value) for r in results]
    assert result["ok"] and result["status"] == 201, result
    kafka_id = result["data"]["appointment_id"]
    status, body = await api.get(f"/v1/appointments/{kafka_id}?min_position={result['position']}")
    assert status == 200 and body["data"]["patient_name"] == "Over Kafka"

    def booked(records):
        return {json.loads(r.value)["subject"] for r in records
                if json.loads(r.value)["type"] == "slotledger.appointment.booked.v1"}

    records = await read_topic(kafka_bootstrap, rt.settings.topic("events"),
                               lambda recs: {http_id, kafka_id} <= booked(recs), 60)
    assert {http_id, kafka_id} <= booked(records)
    for _ in range(50):  # /readyz shows every loop, and the relay's lag: nothing left to publish
        async with http.get(rt.http_url + "/readyz") as resp:
            ready = await resp.json()
        if ready["checks"]["loop:relay"].get("lag_events") == 0:
            break
        await asyncio.sleep(0.1)
    assert resp.status == 200 and ready["checks"]["loop:relay"]["lag_events"] == 0, ready
    assert {"loop:relay", "loop:ingestor", "loop:ingestor-1", "loop:log-waker"} <= set(ready["checks"])
    assert ready["checks"]["loop:ingestor"]["lag_messages"] == 0  # the one command was taken
    lanes = rt.settings.ingest_consumers
    for _ in range(100):  # the process's consumers share the commands' partitions, none of them twice
        assigned = [set(ingestor._consumer.assignment()) for ingestor in rt.ingestors]
        if len(assigned) == lanes and all(assigned):
            break
        await asyncio.sleep(0.1)
    assert len(assigned) == lanes > 1 and all(assigned), assigned
    assert sum(map(len, assigned)) == len(set().union(*assigned)) == rt.settings.topic_partitions, assigned
    for record in records:
        body = json.loads(record.value)
        _assert_valid_cloud_event(body)
        assert record.key.decode() == body["subject"]
    by_subject = {json.loads(r.value)["subject"]: json.loads(r.value) for r in records}
    assert by_subject[http_id]["requestid"] == "req-relay-1"
    assert by_subject[kafka_id]["commandid"] == cmd["command_id"]
    assert by_subject[http_id]["orgid"] == api.org_id
    assert by_subject[http_id]["data"]["appointment"]["patient_name"] == "Over HTTP"


async def test_a_killed_relay_resumes_and_every_event_is_on_the_topic_in_order(pg_url, schema, kafka_bootstrap,
                                                                               topic_prefix, http):
    settings = Settings(database_url=pg_url, database_schema=schema, http_port=0, kafka_bootstrap=kafka_bootstrap,
                        topic_prefix=topic_prefix, poll_interval_seconds=0.2)
    rt = Runtime(settings, components=("gateway", "projectors"))
    await rt.start()
    try:
        api = await setup_clinic(await new_org(rt, http), max_slots=200)

        async def book(i: int) -> str:
            status, body = await api.post("/v1/appointments", {
                "appointment_type": "General Checkup", "appointment_date": local_at(api, 2 + i % 10, "18:00"),
                "patient_name": f"P{i}", "parent_phone": f"+1888{i:06d}"})
            assert status == 201, body
            return body["appointment_id"]

        ids = await asyncio.gather(*(book(i) for i in range(600)))
        # Later events for some appointments, so order per key is tested across several events per key.
        for appointment_id in ids[:100]:
            status, body = await api.patch(f"/v1/appointments/{appointment_id}", {"notes": "n1"})
            assert status == 200, body
            status, body = await api.patch(f"/v1/appointments/{appointment_id}", {"status": "cancelled"})
            assert status == 200, body
        log = await _log(rt)
        topic = settings.topic("events")

        # The relay publishes its first batch, then waits to save its checkpoint: this transaction holds the
        # row (an insert not yet committed). Killed there, it has published events it never checkpointed.
        async with rt.pool.acquire() as holder:
            held = holder.transaction()
            await held.start()
            await holder.execute("INSERT INTO checkpoints (name, transaction_id, global_position)"
                                 " VALUES ('relay:events', '0'::xid8, 0)")
            first = service_process("relay", pg_url, schema, kafka_bootstrap, topic_prefix,
                                    SLOTLEDGER_RELAY_BATCH="100")
            published = await read_topic(kafka_bootstrap, topic, lambda recs: len(recs) >= 100, timeout=60)
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            await held.rollback()
        async with rt.pool.acquire() as conn:
            relayed = await conn.fetchval("SELECT global_position FROM checkpoints WHERE name = 'relay:events'")
        assert relayed is None and len(published) == 100, "killed with a batch published and not checkpointed"

        # Events written while the relay is down are relayed too.
        for appointment_id in ids[100:120]:
            status, body = await api.patch(f"/v1/appointments/{appointment_id}", {"notes": "while down"})
            assert status == 200, body
        log = await _log(rt)
        wanted = {e["event_id"] for e in log}

        second = service_process("relay", pg_url, schema, kafka_bootstrap, topic_prefix)
        try:
            records = await read_topic(kafka_bootstrap, topic, lambda recs: wanted <= {
                json.loads(r.value)["id"] for r in recs}, timeout=90)
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0, second.stderr.read().decode()[-2000:]
    finally:
        await rt.stop()

    on_topic = [json.loads(r.value) for r in records]
    assert {e["id"] for e in on_topic} == wanted  # every event, and nothing that is not in the log
    # Per key, first appearances follow log order (a redelivered tail may repeat, never reorder).
    order = {e["event_id"]: n for n, e in enumerate(log)}
    by_key: dict[str, list[str]] = {}
    for record, body in zip(records, on_topic):
        assert record.key.decode() == body["subject"]
        seen = by_key.setdefault(body["subject"], [])
        if body["id"] not in seen:
            seen.append(body["id"])
    for key, event_ids in by_key.items():
        assert event_ids == sorted(event_ids, key=order.__getitem__), key
    expected_keys = {e["key"] for e in log}
    assert set(by_key) == expected_keys


async def test_events_tail_prints_one_line_per_event(kafka_runtime, http, kafka_bootstrap):
    rt = kafka_runtime
    api = await setup_clinic(await new_org(rt, http))
    booked = []
    for i in range(3):
        status, body = await api.post("/v1/appointments", {
            "appointment_type": "General Checkup", "appointment_date": local_at(api, 4, "10:00"),
            "patient_name": f"Tail {i}", "parent_phone": f"+1999000000{i}"})
        assert status == 201, body
        booked.append(body["appointment_id"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLOTLEDGER_")}
    env.update(SLOTLEDGER_KAFKA_BOOTSTRAP=kafka_bootstrap, SLOTLEDGER_TOPIC_PREFIX=rt.settings.topic_prefix,
               SLOTLEDGER_LOG_LEVEL="warning")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "events", "tail", "--from-beginning", "--type", "appointment.booked",
        "--max", "3", env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert len(lines) == 3, out.decode()
    assert all("slotledger.appointment.booked.v1" in line for line in lines)
    assert {appointment_id for appointment_id in booked if any(appointment_id in line for line in lines)} == set(
        booked)
