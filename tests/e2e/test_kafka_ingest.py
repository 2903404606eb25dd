"""The Kafka ingestor against a real broker and a real database: results, dead letters, exactly-once effects."""
from __future__ import annotations

import datetime as dt
import json
import signal
import uuid
from collections import Counter

from aiokafka import AIOKafkaProducer

from domain.timerules import WEEKDAYS
from services.runtime import Runtime
from services.settings import Settings
from tests.builders import create_body
from tests.e2e.conftest import local_at, local_date, new_org, setup_clinic
from tests.e2e.kafka import command, encoded, publish, read_topic, results_by_command, service_process


def _create(api, days_ahead: int, hhmm: str, phone: str, **extra) -> dict:
    return create_body(local_at(api, days_ahead, hhmm), phone, api.ids["checkup"], "Kafka Patient", **extra)


def _route(api, days_ahead: int) -> str:
    return f"{api.org_id}|{api.ids['branch']}|{local_date(api, days_ahead)}"


MALFORMED_KINDS = ("undecodable", "invalid_json", "not_an_object", "no_command_id", "bad_uuid", "unknown_type",
                   "missing_field", "unknown_field", "wrong_type", "tombstone", "nul_text", "deep", "basic_date")
EXPECTED_REASON = {"undecodable": "undecodable", "invalid_json": "invalid_json", "not_an_object": "schema_invalid",
                   "no_command_id": "schema_invalid", "bad_uuid": "schema_invalid",
                   "unknown_type": "unknown_command_type", "missing_field": "schema_invalid",
                   "unknown_field": "schema_invalid", "wrong_type": "schema_invalid", "tombstone": "schema_invalid",
                   "nul_text": "schema_invalid", "deep": "schema_invalid", "basic_date": "schema_invalid"}
# The same rules as HTTP bodies (DESIGN §4): each of these is dead-lettered with a VALIDATION_ERROR result.
AS_HTTP = ("nul_text", "deep", "basic_date")


def _malformed(api, kind: str, n: int) -> bytes | None:
    good = command(api.org_id, "create_appointment", _create(api, 3, "10:00", f"+1555000{n:04d}"))
    if kind == "undecodable":
        return b"\xff\xfe\x00garbage" + bytes([n])
    if kind == "invalid_json":
        return b'{"command_id": "' + str(n).encode() + b'", "type": '
    if kind == "not_an_object":
        return json.dumps([good, n]).encode()
    if kind == "no_command_id":
        good.pop("command_id")
    elif kind == "bad_uuid":
        good["command_id"] = f"not-a-uuid-{n}"
    elif kind == "unknown_type":
        good["type"] = "teleport_patient"
    elif kind == "missing_field":
        good["payload"].pop("patient_name")
    elif kind == "unknown_field":
        good["payload"]["favourite_colour"] = "teal"
    elif kind == "wrong_type":
        good["payload"]["duration_minutes"] = "forty"
    elif kind == "tombstone":
        return None
    elif kind == "nul_text":
        good["payload"]["patient_name"] = "Aa\u0000dhi"
    elif kind == "deep":
        good["payload"]["notes"] = json.loads("[" * 40 + "]" * 40)
    elif kind == "basic_date":
        good = command(api.org_id, "update_window_day", {"status": "CLOSED"}, window_id=str(n), date="20261202")
    return json.dumps(good).encode()


async def _events_by_command(rt: Runtime) -> dict[str, set[int]]:
    """command_id → the transactions its events were written in."""
    async with rt.pool.acquire() as conn:
        rows = await conn.fetch("SELECT metadata->>'command_id' AS cid, transaction_id::text AS tx FROM events"
                                " WHERE metadata ? 'command_id'")
    out: dict[str, set[int]] = {}
    for row in rows:
        out.setdefault(row["cid"], set()).add(row["tx"])
    return out


async def test_a_thousand_commands_with_fifty_malformed_each_answered_once(kafka_runtime, http, kafka_bootstrap):
    rt = kafka_runtime
    api = await setup_clinic(await new_org(rt, http))
    # Appointments to update, cancel and complete over Kafka.
    existing = []
    for i in range(40):
        status, body = await api.post("/v1/appointments", _create(api, 25 + i % 4, "17:30", f"+1444000{i:04d}"))
        assert status == 201, body
        existing.append(body["appointment_id"])

    valid: list[tuple[dict, str]] = []
    for i in range(880):  # 44 per date into 20 slots: 20 succeed, 24 are refused SLOT_FULL, per date
        days = 2 + i % 20
        valid.append((command(api.org_id, "create_appointment",
                              _create(api, days, "09:30", f"+1555{i:06d}")), _route(api, days)))
    for i in range(10):  # one external reference sent twice: one booking, one idempotent replay
        payload = _create(api, 22, "10:00", f"+1666{i:06d}", external_reference_id=f"crm-{i}")
        valid.append((command(api.org_id, "create_appointment", payload), _route(api, 22)))
        valid.append((command(api.org_id, "create_appointment", payload), _route(api, 22)))
    for appointment_id in existing[:20]:
        valid.append((command(api.org_id, "update_appointment", {"notes": "via kafka"},
                              appointment_id=appointment_id), appointment_id))
    for appointment_id in existing[20:30]:
        valid.append((command(api.org_id, "cancel_appointment", {"cancellation_reason": "patient called"},
                              appointment_id=appointment_id), appointment_id))
    for appointment_id in existing[30:40]:
        valid.append((command(api.org_id, "complete_appointment", {"diagnosis": "fine"},
                              appointment_id=appointment_id), appointment_id))
    morning_windows = sorted(set(api.ids["windows"][(d, "Morning")] for d in
                                 ("monday", "tuesday", "wednesday", "thursday", "friday")))
    for i, window_id in enumerate(morning_windows):
        valid.append((command(api.org_id, "update_window", {"batch": f"MB{i}"}, window_id=window_id), window_id))
    for days in range(23, 28):
        date = local_date(api, days)
        weekday = WEEKDAYS[dt.date.fromisoformat(date).weekday()]
        window_id = api.ids["windows"][(weekday, "Morning")]
        valid.append((command(api.org_id, "update_window_day", {"max_slots": 5}, window_id=window_id, date=date),
                      f"{window_id}|{date}"))
    assert len(valid) == 950

    malformed = [(kind, _malformed(api, kind, n)) for kind in MALFORMED_KINDS for n in range(5)]
    messages = [encoded(cmd, key) for cmd, key in valid]
    # Malformed ones are spread through the stream, not bunched at the end.
    for i, (kind, value) in enumerate(malformed):
        messages.insert(i * 19, (f"bad-{i}".encode(), value))
    await publish(kafka_bootstrap, rt.settings.topic("commands"), messages)

    valid_ids = {cmd["command_id"] for cmd, _ in valid}
    refused_ids = {json.loads(value)["command_id"] for kind, value in malformed if kind in AS_HTTP}
    results_topic = rt.settings.topic("command-results")
    records = await read_topic(kafka_bootstrap, results_topic,
                               lambda recs: valid_ids | refused_ids <= set(results_by_command(recs)), timeout=120)
    results = results_by_command(records)
    assert valid_ids <= set(results), f"{len(valid_ids - set(results))} valid commands got no result"
    assert all(len(results[cid]) == 1 for cid in valid_ids), "a valid command got more than one result"

    dead = await read_topic(kafka_bootstrap, rt.settings.topic("commands.dlq"),
                            lambda recs: len(recs) >= len(malformed), 60)
    assert len(dead) == len(malformed)
    by_key = {r.key.decode(): r for r in dead}
    for i, (kind, value) in enumerate(malformed):
        letter = by_key[f"bad-{i}"]
        headers = dict(letter.headers)
        assert letter.value == value, kind  # the original bytes, untouched
        assert headers["dlq.reason"].decode() == EXPECTED_REASON[kind], (kind, headers)
        assert headers["dlq.error"], kind
        assert headers["dlq.topic"].decode() == rt.settings.topic("commands")
        if kind in AS_HTTP:
            refusal = results[headers["dlq.command_id"].decode()][0]
            assert (refusal["status"], refusal["error"]["code"]) == (400, "VALIDATION_ERROR"), (kind, refusal)

    # Business refusals are results, never dead letters.
    creates = [results[cmd["command_id"]][0] for cmd, _ in valid[:880]]
    assert Counter(r["status"] for r in creates) == {201: 400, 409: 480}
    assert {r["error"]["code"] for r in creates if not r["ok"]} == {"SLOT_FULL"}
    pairs = [(results[valid[880 + 2 * i][0]["command_id"]][0], results[valid[881 + 2 * i][0]["command_id"]][0])
             for i in range(10)]
    for first, second in pairs:
        assert (first["status"], second["status"], second.get("idempotent")) == (201, 200, True)
        assert first["data"]["appointment_id"] == second["data"]["appointment_id"]
    assert all(results[c["command_id"]][0]["ok"] for c, _ in valid[900:])

    # The database holds each valid command's effect exactly once: one transaction per command with events,
    # and exactly the commands whose result says they wrote something.
    transactions = await _events_by_command(rt)
    assert all(len(txs) == 1 for txs in transactions.values())
    wrote = {cid for cid in valid_ids if results[cid][0].get("position") is not None}
    assert set(transactions) == wrote
    async with rt.pool.acquire() as conn:
        booked = await conn.fetchval("SELECT count(*) FROM events WHERE event_type = 'appointment.booked'"
                                     " AND metadata->>'command_id' = ANY($1)", list(valid_ids))
        per_day = await conn.fetch("SELECT stream_id, count(*) AS n FROM events WHERE event_type ="
                                   " 'appointment.booked' AND metadata ? 'command_id' GROUP BY stream_id")
    assert booked == 400 + 10
    assert sorted(r["n"] for r in per_day if r["n"] == 20) == [20] * 20  # each date's 20 slots, never more
    for cid, (cmd, _) in zip([c["command_id"] for c, _ in valid[900:930]], valid[900:930]):
        status, body = await api.get(f"/v1/appointments/{cmd['appointment_id']}"
                                     f"?min_position={results[cid][0]['position']}")
        expected = {"update_appointment": "confirmed", "cancel_appointment": "cancelled",
                    "complete_appointment": "completed"}[cmd["type"]]
        assert status == 200 and body["data"]["status"] == expected, body

    # Republishing 100 processed commands: the same results again, and not one new event.
    async with rt.pool.acquire() as conn:
        events_before = await conn.fetchval("SELECT count(*) FROM events")
    again = [valid[i] for i in range(0, 950, 10)][:95] + valid[-5:]
    assert len(again) == 100
    await publish(kafka_bootstrap, rt.settings.topic("commands"), [encoded(cmd, key) for cmd, key in again])
    again_ids = {cmd["command_id"] for cmd, _ in again}
    records = await read_topic(kafka_bootstrap, results_topic, lambda recs: all(
        len(results_by_command(recs).get(cid, ())) >= 2 for cid in again_ids), timeout=60)
    replayed = results_by_command(records)
    for cid in again_ids:
        assert len(replayed[cid]) == 2 and replayed[cid][0] == replayed[cid][1], replayed[cid]
    async with rt.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM events") == events_before


async def test_unknown_org_is_a_not_found_result(kafka_runtime, kafka_bootstrap):
    rt = kafka_runtime
    cmd = command(str(uuid.uuid4()), "cancel_appointment", {}, appointment_id="appt_0000000000")
    await publish(kafka_bootstrap, rt.settings.topic("commands"), [encoded(cmd)])
    records = await read_topic(kafka_bootstrap, rt.settings.topic("command-results"), lambda recs: len(recs) >= 1, 60)
    [result] = [json.loads(r.value) for r in records]
    assert (result["command_id"], result["ok"], result["status"], result["error"]["code"]) == (
        cmd["command_id"], False, 404, "NOT_FOUND")


async def test_a_message_with_neither_key_nor_value_is_dead_lettered_and_the_next_is_answered(
        kafka_runtime, kafka_bootstrap):
    """aiokafka's send() refuses such a message, but other clients produce them; the ingestor's dead letter
    goes out the same way (keyless: any partition) and the command after it is answered."""
    rt = kafka_runtime
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        batch = producer.create_batch()
        batch.append(key=None, value=None, timestamp=None)
        batch.close()
        await (await producer.send_batch(batch, rt.settings.topic("commands"), partition=0))
    finally:
        await producer.stop()
    after = command(str(uuid.uuid4()), "cancel_appointment", {}, appointment_id="appt_0000000000")
    await publish(kafka_bootstrap, rt.settings.topic("commands"), [(None, encoded(after)[1])])
    [letter] = await read_topic(kafka_bootstrap, rt.settings.topic("commands.dlq"), lambda recs: len(recs) >= 1, 60)
    assert (letter.key, letter.value) == (None, None)
    assert dict(letter.headers)["dlq.reason"] == b"schema_invalid"
    records = await read_topic(kafka_bootstrap, rt.settings.topic("command-results"), lambda recs: len(recs) >= 1, 60)
    assert [json.loads(r.value)["command_id"] for r in records] == [after["command_id"]]


async def test_a_killed_ingestor_loses_no_command_and_applies_none_twice(pg_url, schema, kafka_bootstrap,
                                                                          topic_prefix, http):
    settings = Settings(database_url=pg_url, database_schema=schema, http_port=0, kafka_bootstrap=kafka_bootstrap,
                        topic_prefix=topic_prefix, poll_interval_seconds=0.2)
    rt = Runtime(settings, components=("gateway", "projectors", "relay"))  # the relay creates the topics
    await rt.start()
    try:
        api = await setup_clinic(await new_org(rt, http), max_slots=60)
        cmds = [(command(api.org_id, "create_appointment", _create(api, 2 + i % 25, "18:00", f"+1777{i:06d}")),
                 _route(api, 2 + i % 25)) for i in range(3000)]
        await publish(kafka_bootstrap, settings.topic("commands"), [encoded(c, k) for c, k in cmds])
        ids = {c["command_id"] for c, _ in cmds}
        results_topic = settings.topic("command-results")

        # small batches, so the kill lands mid-stream however fast the ingestor is
        first = service_process("ingestor", pg_url, schema, kafka_bootstrap, topic_prefix,
                                SLOTLEDGER_INGEST_MAX_BATCH="100")
        await read_topic(kafka_bootstrap, results_topic, lambda recs: len(recs) >= 300, timeout=60)
        first.send_signal(signal.SIGKILL)  # mid-stream: no clean stop, no final commit
        first.wait(10)
        async with rt.pool.acquire() as conn:
            applied_at_kill = await conn.fetchval("SELECT count(*) FROM command_results")
        assert 0 < applied_at_kill < len(ids), "the kill should land mid-stream"

        second = service_process("ingestor", pg_url, schema, kafka_bootstrap, topic_prefix)
        try:
            records = await read_topic(kafka_bootstrap, results_topic,
                                       lambda recs: ids <= set(results_by_command(recs)), timeout=120)
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0, second.stderr.read().decode()[-2000:]
        results = results_by_command(records)
        assert ids <= set(results), f"{len(ids - set(results))} commands lost"
        # A command answered twice (redelivered after the kill) is answered the same way both times.
        assert all(all(r == rs[0] for r in rs) for rs in results.values())
        transactions = await _events_by_command(rt)
        assert all(len(txs) == 1 for txs in transactions.values())
        created = {cid for cid in ids if results[cid][0]["status"] == 201}
        assert set(transactions) == created
        assert len(created) == 25 * 60  # 120 commands per date into 60 slots: half are SLOT_FULL
    finally:
        await rt.stop()


async def test_lifecycle_and_doctor_rules_hold_over_kafka_too(kafka_runtime, http, kafka_bootstrap):
    rt = kafka_runtime
    api = await setup_clinic(await new_org(rt, http))
    status, body = await api.post("/v1/appointments", _create(api, 5, "09:30", "+15550003333",
                                                              assigned_doctor="Dr. House"))
    assert status == 201, body
    appointment_id = body["appointment_id"]
    steps = [
        command(api.org_id, "complete_appointment", {"diagnosis": "lupus, finally"}, appointment_id=appointment_id),
        command(api.org_id, "cancel_appointment", {}, appointment_id=appointment_id),
        command(api.org_id, "update_appointment", {"status": "in_progress"}, appointment_id=appointment_id),
        command(api.org_id, "create_appointment", _create(api, 5, "09:30", "+15550004444",
                                                          assigned_doctor="dr. house")),
    ]
    await publish(kafka_bootstrap, rt.settings.topic("commands"), [encoded(c, "one-lane") for c in steps])
    ids = [c["command_id"] for c in steps]
    records = await read_topic(kafka_bootstrap, rt.settings.topic("command-results"),
                               lambda recs: set(ids) <= set(results_by_command(recs)), 60)
    results = results_by_command(records)
    completed, cancel, start, clash = (results[cid][0] for cid in ids)
    assert (completed["status"], completed["data"]["status"], completed["data"]["diagnosis"]) == (
        200, "completed", "lupus, finally")
    assert (cancel["status"], cancel["error"]["code"]) == (422, "INVALID_STATE_TRANSITION")
    assert (start["status"], start["error"]["code"]) == (422, "INVALID_STATE_TRANSITION")
    # The completed appointment still holds the doctor's time (only cancelled and no-show ones give it back).
    assert (clash["status"], clash["error"]["code"]) == (409, "APPOINTMENT_CONFLICT")
    assert clash["error"]["details"]["conflicting_appointment_id"] == appointment_id
