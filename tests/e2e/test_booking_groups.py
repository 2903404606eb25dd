"""Creates that queue while others commit are decided together and appended in one statement (group commit),
on one window-day or many: each still gets its own time, type and token, the rule order holds (the duplicate
rule across the group's window-days too), and nothing about the answers changes."""
from __future__ import annotations

import asyncio
import uuid

from services.booking_batch import BATCH_SIZE, LOST_RACES
from services.command_results import recall
from tests.builders import create_body
from tests.e2e.conftest import local_at, local_date, new_org, setup_clinic


def batches() -> tuple[float, float]:
    """(groups, creates) decided so far in this process."""
    samples = {s.name: s.value for s in BATCH_SIZE.collect()[0].samples}
    return samples["slotledger_booking_group_size_count"], samples["slotledger_booking_group_size_sum"]


def lost_races() -> float:
    return next(s.value for s in LOST_RACES.collect()[0].samples if s.name.endswith("_total"))


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
    assert after[1] - before[1] == 60 and after[0] - before[0] < 60  # they were decided in groups
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
        stored = {str(k): v for k, v in (await recall(conn, [uuid.UUID(c) for c in commands])).items()}
    assert set(stored) == set(commands)
    for command_id, outcome in zip(commands, outcomes):
        result = stored[command_id]
        assert result["position"] == outcome.position == result["data"]["position"]
        assert result["data"]["appointment_id"] == outcome.data["appointment_id"]
    assert len({o.position for o in outcomes}) == 30


async def test_simultaneous_creates_over_many_window_days_commit_in_groups(runtime, http):
    api = await setup_clinic(await new_org(runtime, http), max_slots=5, windows=(
        ("Morning", "09:00", "12:00", "MA"), ("Afternoon", "13:00", "16:00", "AA"), ("Evening", "17:00", "20:00", "EA")))
    await _warm(api)
    before = batches()
    # Ten dates × three windows, three creates each: 90 creates over 30 window-days, none full.
    wanted = [(local_at(api, 7 + i % 10, ("09:00", "14:00", "18:00")[i // 10 % 3]), f"+1555{i:04d}")
              for i in range(90)]
    results = await asyncio.gather(*(api.post("/v1/appointments", create_body(when, phone, api.ids["checkup"], "G"))
                                     for when, phone in wanted))
    assert [s for s, _ in results] == [201] * 90, [b for s, b in results if s != 201][:3]
    after = batches()
    assert after[1] - before[1] == 90 and after[0] - before[0] < 90  # several window-days per statement
    for (when, phone), (_, body) in zip(wanted, results):
        record = body["data"]
        assert record["parent_phone"] == phone
        assert record["appointment_date"].replace(".000Z", "Z") == when.replace("+00:00", "Z")
        status, read = await api.get(f"/v1/appointments/{record['appointment_id']}")
        assert status == 200 and read["data"]["appointment_date"] == record["appointment_date"]
    positions = [b["data"]["position"] for _, b in results]
    assert len(set(positions)) == 90 and all(isinstance(p, int) for p in positions)
    status, body = await api.get(f"/v1/appointment-slots/availability?date={local_date(api, 7)}")
    assert status == 200
    assert sorted(row["booked"] for row in body["data"]) == [3, 3, 3]


async def test_one_phone_in_two_window_days_of_a_group_is_booked_once(runtime, http):
    """The duplicate rule holds across the window-days of one group: one phone, one type, one date, two windows
    at once; exactly one is booked and the other names it."""
    api = await setup_clinic(await new_org(runtime, http), max_slots=10)
    await _warm(api)
    for round_ in range(5):
        phone = f"+1444{round_:04d}"
        bodies = [create_body(local_at(api, 12 + round_, t), phone, api.ids["checkup"], "Twice")
                  for t in ("09:00", "18:00")]
        fillers = [create_body(local_at(api, 12 + round_, "10:00"), f"+1333{round_}{i:03d}", api.ids["checkup"], "F")
                   for i in range(6)]
        results = await asyncio.gather(*(api.post("/v1/appointments", b) for b in [*fillers, *bodies]))
        assert [s for s, _ in results[:6]] == [201] * 6
        pair = results[6:]
        assert sorted(s for s, _ in pair) == [201, 409], pair
        (_, booked), (_, refused) = sorted(pair, key=lambda r: r[0])
        assert refused["error"]["code"] == "DUPLICATE_BOOKING"
        assert refused["existing_appointment_id"] == booked["data"]["appointment_id"]


async def test_a_window_day_another_process_filled_is_not_overbooked_and_the_cache_is_checked_again(runtime, http):
    """Two handlers on one database are two processes. B fills a window-day A has cached; A's next creates
    there are refused SLOT_FULL (its stale cache costs a retry, never a place), and A checks its cache before
    deciding until checking finds it current again and again."""
    from services.booking_batch import TRUST_AFTER
    from services.handler import CommandHandler
    from services.outcome import Meta

    api = await setup_clinic(await new_org(runtime, http), max_slots=6)
    a = runtime.handler
    b = CommandHandler(runtime.pool, runtime.store)
    when = local_at(api, 20, "09:00")
    request = {"appointment_type": "General Checkup", "appointment_date": when, "patient_name": "P",
               "branch_id": None, "session": None, "batch": None, "assigned_doctor": None,
               "external_reference_id": None, "notes": None, "reason": None, "duration_minutes": None}
    await a.create_appointment(api.org_id, {**request, "parent_phone": "+15550000001"}, Meta())  # cached by A
    for i in range(2, 7):  # B fills the rest
        await b.create_appointment(api.org_id, {**request, "parent_phone": f"+1555000000{i}"}, Meta())
    a.batcher.trusting = TRUST_AFTER  # as a process that has seen no other writer lately
    refused = await asyncio.gather(*(a.create_appointment(api.org_id, {**request, "parent_phone": f"+1556000000{i}"},
                                                          Meta()) for i in range(4)), return_exceptions=True)
    assert [getattr(r, "code", r) for r in refused] == ["SLOT_FULL"] * 4
    assert a.batcher.trusting < TRUST_AFTER  # it saw its cache was behind
    status, body = await api.get(f"/v1/appointment-slots/availability?date={local_date(api, 20)}")
    assert [row["booked"] for row in body["data"] if row["session"] == "Morning"] == [6]
    for i in range(TRUST_AFTER):  # verified groups that find the cache current: trusted again
        when = local_at(api, 21 + i % 9, ("09:00", "18:00")[i // 9 % 2])
        outcome = await a.create_appointment(api.org_id, {**request, "appointment_date": when,
                                                          "parent_phone": f"+1557{i:07d}"}, Meta())
        assert outcome.status == 201
    assert a.batcher.trusting >= TRUST_AFTER


async def test_two_processes_writing_one_window_day_wait_for_each_other_instead_of_losing_races(runtime, http):
    """Two handlers on one database are two processes, each checking its cache (as once it has seen another
    writer). Their groups on the same window-days hold those days while deciding: the second waits for the
    first, decides on what it wrote, and never loses a race (nor the work of a whole group)."""
    from services.handler import CommandHandler
    from services.outcome import Meta

    api = await setup_clinic(await new_org(runtime, http), max_slots=40)
    a, b = runtime.handler, CommandHandler(runtime.pool, runtime.store)
    request = {"appointment_type": "General Checkup", "patient_name": "P", "branch_id": None, "session": None,
               "batch": None, "assigned_doctor": None, "external_reference_id": None, "notes": None, "reason": None,
               "duration_minutes": None}
    days = [local_at(api, 10 + d, "09:00") for d in range(3)]
    for h, handler in enumerate((a, b)):  # both have the days cached, and both distrust their caches
        for n, when in enumerate(days):
            await handler.create_appointment(api.org_id, {**request, "appointment_date": when,
                                                          "parent_phone": f"+1558{h}{n:05d}"}, Meta())
        handler.batcher.trusting = 0
    lost = lost_races()
    outcomes = await asyncio.gather(*(handler.create_appointment(api.org_id, {
        **request, "appointment_date": days[i % 3], "parent_phone": f"+1559{h}{i:05d}"}, Meta())
        for i in range(12) for h, handler in enumerate((a, b))))
    assert [o.status for o in outcomes] == [201] * 24
    assert lost_races() == lost
    status, body = await api.get(f"/v1/appointment-slots/availability?date={local_date(api, 10)}")
    assert [row["booked"] for row in body["data"] if row["session"] == "Morning"] == [2 + 8]
