"""Creates queued on one window-day are decided together and appended in one statement: each still gets its own
time, type and token, the rule order holds, and nothing about the answers changes."""
from __future__ import annotations

import asyncio
import uuid

from services.booking_batch import BATCH_SIZE
from tests.builders import create_body
from tests.e2e.conftest import local_at, new_org, setup_clinic


def batches() -> tuple[float, float]:
    """(batches, creates) decided so far in this process."""
    samples = {s.name: s.value for s in BATCH_SIZE.collect()[0].samples}
    return samples["slotledger_window_day_batch_size_count"], samples["slotledger_window_day_batch_size_sum"]


async def _warm(api) -> None:
    # One create first, so the org's configuration is cached and the queued path is taken.
    status, body = await api.post("/v1/appointments", create_body(local_at(api, 6, "09:00"), "+10000000000",
                                                                  "Follow-up Visit", "Warm"))
    assert status == 201, body


async def test_simultaneous_creates_keep_their_own_time_type_and_token(runtime, http):
    api = await setup_clinic(await new_org(runtime, http), max_slots=40)
    status, _ = await api.patch("/v1/appointment-config", {"token_numbering": True})
    assert status == 200
    await _warm(api)
    before = batches()
    wanted = [(local_at(api, 3, f"{9 + i % 3:02d}:{i % 4 * 15:02d}"),
               api.ids["checkup"] if i % 2 else api.ids["follow"], f"+1777{i:04d}") for i in range(60)]
    results = await asyncio.gather(*(api.post("/v1/appointments", create_body(when, phone, service, f"P{i}"))
                                     for i, (when, service, phone) in enumerate(wanted)))
    assert [s for s, _ in results] == [201] * 60
    for (when, service, phone), (_, body) in zip(wanted, results):
        record = body["data"]
        assert (record["appointment_type"], record["parent_phone"]) == (service, phone)
        assert record["appointment_date"].replace(".000Z", "Z") == when.replace("+00:00", "Z"), (record, when)
        status, read = await api.get(f"/v1/appointments/{record['appointment_id']}?min_position={record['position']}")
        assert read["data"]["appointment_date"] == record["appointment_date"]
    after = batches()
    assert after[1] - before[1] == 60 and after[0] - before[0] < 60  # they were decided in batches
    tokens = sorted(b["data"]["token"] for _, b in results)
    assert tokens == list(range(1, 61))  # one window-day: tokens 1..60 once each (the warm-up is on another day)


async def test_a_full_batch_still_says_duplicate_before_full(runtime, http):
    api = await setup_clinic(await new_org(runtime, http), max_slots=3)
    await _warm(api)
    # Three phones already booked that date, in the Evening window.
    for i in range(3):
        status, body = await api.post("/v1/appointments", {
            "appointment_type": "General Checkup", "appointment_date": local_at(api, 4, "18:00"),
            "patient_name": "Evening", "parent_phone": f"+1888{i:04d}"})
        assert status == 201, body
    # Thirty simultaneous Morning creates on 3 slots: those three phones are duplicates (rule 9 before 10).
    phones = [f"+1888{i:04d}" if i < 3 else f"+1999{i:04d}" for i in range(30)]
    results = await asyncio.gather(*(api.post("/v1/appointments", {
        "appointment_type": "General Checkup", "appointment_date": local_at(api, 4, "09:30"),
        "patient_name": "Morning", "parent_phone": phone}) for phone in phones))
    codes = ["201" if s == 201 else b["error"]["code"] for s, b in results]
    assert codes[:3] == ["DUPLICATE_BOOKING"] * 3, codes
    assert codes[3:].count("201") == 3 and codes[3:].count("SLOT_FULL") == 24
    for status, body in results[:3]:
        assert body["existing_appointment_id"].startswith("appt_")


async def test_queued_kafka_style_results_are_recorded_once(runtime, http):
    """Creates carrying command ids (as the ingestor sends them) in one batch: each result is stored once,
    with its own booking's log position."""
    from services.outcome import Meta

    api = await setup_clinic(await new_org(runtime, http), max_slots=50)
    await _warm(api)
    commands = [str(uuid.uuid4()) for _ in range(30)]
    outcomes = await asyncio.gather(*(runtime.handler.create_appointment(api.org_id, {
        "appointment_type": "General Checkup", "appointment_date": local_at(api, 5, "10:00"),
        "patient_name": "K", "parent_phone": f"+1666{i:04d}", "branch_id": None, "session": None, "batch": None,
        "assigned_doctor": None, "external_reference_id": None, "notes": None, "reason": None,
        "duration_minutes": None}, Meta(command_id=command_id, actor="kafka"))
        for i, command_id in enumerate(commands)))
    async with runtime.pool.acquire() as conn:
        rows = await conn.fetch("SELECT command_id::text, result FROM command_results WHERE command_id::text"
                                " = ANY($1)", commands)
    stored = {r["command_id"]: r["result"] for r in rows}
    assert set(stored) == set(commands)
    for command_id, outcome in zip(commands, outcomes):
        result = stored[command_id]
        assert result["position"] == outcome.position == result["data"]["position"]
        assert result["data"]["appointment_id"] == outcome.data["appointment_id"]
    assert len({o.position for o in outcomes}) == 30
