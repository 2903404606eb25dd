"""Timed holds and the waitlist (DESIGN §8) over real HTTP and a real broker.

The clock is moved through the documented test seam: `Runtime.handler.clock` is the one clock every decision,
read and sweep of the service uses.
"""
from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter

from domain import windowday as wd
from services.handler import utcnow
from services.projector import rebuild
from services.runtime import Runtime
from tests.builders import create_body
from tests.e2e.conftest import local_at, local_date, new_org, setup_clinic
from tests.e2e.kafka import command, encoded, publish, read_topic, results_by_command


class Clock:
    def __init__(self) -> None:
        self.offset = dt.timedelta(0)

    def __call__(self) -> dt.datetime:
        return utcnow() + self.offset


def controlled(rt: Runtime) -> Clock:
    clock = rt.handler.clock = Clock()
    return clock


async def _availability(api, days_ahead: int, session: str = "Morning") -> dict:
    status, body = await api.get(f"/v1/appointment-slots/availability?date={local_date(api, days_ahead)}"
                                 f"&appointment_type={api.ids['checkup']}&session={session}")
    assert status == 200, body
    (row,) = body["data"]
    return {k: row[k] for k in ("booked", "held", "available")}


def _hold_body(api, days_ahead: int, minutes: int = 5, **extra) -> dict:
    return {"appointment_type": api.ids["checkup"], "appointment_date": local_at(api, days_ahead, "10:00"),
            "hold_minutes": minutes, **extra}


def _create(api, days_ahead: int, n: int, hhmm: str = "10:00") -> dict:
    return create_body(local_at(api, days_ahead, hhmm), f"+1555{n:07d}", api.ids["checkup"], f"Patient {n}")


async def _count(rt: Runtime, sql: str, *args) -> int:
    async with rt.pool.acquire() as conn:
        return await conn.fetchval(sql, *args)


# -- holds over HTTP ---------------------------------------------------------------------------------------

async def test_two_hundred_concurrent_holds_on_twenty_places(runtime, http):
    api = await setup_clinic(await new_org(runtime, http), max_slots=20)
    answers = await asyncio.gather(*(api.post("/v1/appointment-holds", _hold_body(api, 3)) for _ in range(200)))
    held = [body["data"] for status, body in answers if status == 201]
    assert len(held) == 20
    assert Counter(body["error"]["code"] for status, body in answers if status != 201) == {"SLOT_FULL": 180}
    assert all(h["status"] == "held" and h["hold_id"].startswith("hold_") and h["expires_at"] for h in held)
    assert await _availability(api, 3) == {"booked": 0, "held": 20, "available": 0}
    status, body = await api.post("/v1/appointments", _create(api, 3, 1))
    assert (status, body["error"]["code"]) == (409, "SLOT_FULL")

    confirms = await asyncio.gather(*(
        api.post(f"/v1/appointment-holds/{h['hold_id']}/confirm", {"patient_name": f"P{n}",
                                                                   "parent_phone": f"+1555200{n:04d}"})
        for n, h in enumerate(held)))
    assert [status for status, _ in confirms] == [201] * 20, confirms
    booked = {body["appointment_id"] for _, body in confirms}
    assert len(booked) == 20
    assert await _availability(api, 3) == {"booked": 20, "held": 0, "available": 0}
    status, again = await api.post(f"/v1/appointment-holds/{held[0]['hold_id']}/confirm", {})
    assert status == 200 and again["idempotent"] is True and again["appointment_id"] in booked
    status, hold = await api.get(f"/v1/appointment-holds/{held[0]['hold_id']}")
    assert hold["data"]["status"] == "confirmed" and hold["data"]["appointment_id"] == again["appointment_id"]
    status, appointment = await api.get(f"/v1/appointments/{again['appointment_id']}")
    assert status == 200 and appointment["data"]["status"] == "confirmed"


async def test_expired_holds_stop_counting_at_once_and_the_sweeper_records_them(runtime, http):
    api = await setup_clinic(await new_org(runtime, http), max_slots=20)
    clock = controlled(runtime)
    held = []
    for _ in range(20):
        status, body = await api.post("/v1/appointment-holds", _hold_body(api, 4, minutes=1))
        assert status == 201, body
        held.append(body["data"]["hold_id"])
    status, body = await api.post("/v1/appointments", _create(api, 4, 1))
    assert (status, body["error"]["code"]) == (409, "SLOT_FULL")
    status, released = await api.call("DELETE", f"/v1/appointment-holds/{held[0]}")
    assert status == 200 and released["data"]["status"] == "released"
    status, body = await api.post("/v1/appointments", _create(api, 4, 2))
    assert status == 201, body  # the released place

    clock.offset = dt.timedelta(seconds=61)
    # Not swept yet: the read model still says held, yet nothing counts them.
    assert await _count(runtime, "SELECT count(*) FROM rm_holds WHERE status = 'held'") == 19
    assert await _availability(api, 4) == {"booked": 1, "held": 0, "available": 19}
    status, body = await api.post(f"/v1/appointment-holds/{held[1]}/confirm",
                                  {"patient_name": "Late", "parent_phone": "+15559999999"})
    assert (status, body["error"]["code"]) == (410, "HOLD_EXPIRED")
    status, hold = await api.get(f"/v1/appointment-holds/{held[1]}")
    assert hold["data"]["status"] == "expired"
    creates = await asyncio.gather(*(api.post("/v1/appointments", _create(api, 4, 100 + n)) for n in range(19)))
    assert [status for status, _ in creates] == [201] * 19, creates

    assert await runtime.sweeper.sweep() == 19
    assert await _count(runtime, "SELECT count(*) FROM events WHERE event_type = 'hold.expired'") == 19
    assert await _count(runtime, "SELECT count(*) FROM rm_holds WHERE status = 'expired'") == 19
    assert await runtime.sweeper.sweep() == 0
    status, body = await api.post("/v1/appointments", _create(api, 4, 200))
    assert (status, body["error"]["code"]) == (409, "SLOT_FULL")
    assert await _availability(api, 4) == {"booked": 20, "held": 0, "available": 0}


async def test_a_hold_keeps_its_doctor_until_it_expires(runtime, http):
    api = await setup_clinic(await new_org(runtime, http), max_slots=20)
    clock = controlled(runtime)
    status, body = await api.post("/v1/appointment-holds", _hold_body(api, 5, minutes=1, assigned_doctor="Dr. Rao"))
    assert status == 201, body
    clash = {**_create(api, 5, 1), "assigned_doctor": "dr. rao"}
    status, body = await api.post("/v1/appointments", clash)
    assert (status, body["error"]["code"]) == (409, "APPOINTMENT_CONFLICT")
    assert body["error"]["details"]["conflicting_appointment_id"].startswith("hold_")
    clock.offset = dt.timedelta(seconds=61)
    status, body = await api.post("/v1/appointments", clash)  # before any sweep
    assert status == 201, body


# -- the waitlist over HTTP ----------------------------------------------------------------------------------

async def test_freed_places_go_to_the_waitlist_in_join_order_in_the_cancels_own_transaction(runtime, http):
    api = await setup_clinic(await new_org(runtime, http), max_slots=5)
    clock = controlled(runtime)
    booked = []
    for n in range(5):
        status, body = await api.post("/v1/appointments", _create(api, 3, n))
        assert status == 201, body
        booked.append(body["appointment_id"])
    entries = []
    for n in range(5):
        status, body = await api.post("/v1/waitlist", {
            "appointment_type": "general checkup", "date": local_date(api, 3), "session": "Morning",
            "patient_name": f"Waiting {n}", "parent_phone": f"+1555300{n:04d}"})
        assert status == 201 and body["data"]["status"] == "waiting" and body["position"] == n + 1, body
        entries.append(body["waitlist_id"])

    for i in range(3):
        clock.offset = dt.timedelta(minutes=5 * i)
        racing = [api.post("/v1/appointments", _create(api, 3, 50 + 10 * i + k)) for k in range(10)]
        cancel = api.patch(f"/v1/appointments/{booked[i]}", {"status": "cancelled"})
        answers = await asyncio.gather(cancel, *racing)
        assert answers[0][0] == 200, answers[0]
        assert {body["error"]["code"] for _, body in answers[1:]} == {"SLOT_FULL"}  # never the freed place
    queue = await _waitlist(api)
    assert [e["status"] for e in queue] == ["offered"] * 3 + ["waiting"] * 2
    assert [e["position"] for e in queue[3:]] == [1, 2]
    assert [e["waitlist_id"] for e in queue] == entries
    assert await _availability(api, 3) == {"booked": 2, "held": 3, "available": 0}
    async with runtime.pool.acquire() as conn:  # each offer in the transaction of the cancel that freed it
        rows = await conn.fetch(
            "SELECT event_type, transaction_id::text AS tx, data FROM events WHERE event_type IN"
            " ('appointment.status_changed', 'waitlist.offered') ORDER BY global_position")
    cancels = [r["tx"] for r in rows if r["event_type"] == "appointment.status_changed"]
    offers = [(r["tx"], r["data"]["waitlist_id"]) for r in rows if r["event_type"] == "waitlist.offered"]
    assert offers == list(zip(cancels, entries[:3]))

    clock.offset = dt.timedelta(minutes=16)  # the first offer (made at +0, for 15 minutes) has expired
    assert await runtime.sweeper.sweep() == 1
    queue = await _waitlist(api)
    assert [e["status"] for e in queue] == ["expired", "offered", "offered", "offered", "waiting"]
    assert queue[4]["position"] == 1
    for entry in queue[1:4]:
        status, body = await api.post(f"/v1/appointment-holds/{entry['hold_id']}/confirm", {})
        assert status == 201 and body["data"]["patient_name"] == entry["patient_name"], body
    queue = await _waitlist(api)
    assert [e["status"] for e in queue] == ["expired", "booked", "booked", "booked", "waiting"]
    assert all(e["appointment_id"] for e in queue[1:4])
    assert await _availability(api, 3) == {"booked": 5, "held": 0, "available": 0}
    status, left = await api.call("DELETE", f"/v1/waitlist/{entries[4]}")
    assert status == 200 and left["data"]["status"] == "left"
    status, body = await api.get(f"/v1/waitlist/{entries[4]}")
    assert body["data"]["status"] == "left" and body["data"]["position"] is None

    async def snapshot():  # seq is a fresh sequence after a rebuild: only its order must hold
        async with runtime.pool.acquire() as conn:
            holds = sorted(map(tuple, await conn.fetch("SELECT * FROM rm_holds")), key=str)
            entries = [tuple(r) for r in await conn.fetch(
                "SELECT waitlist_id, org_id, date, branch_id, service_id, streams, status, hold_id, offer_expires_at,"
                " appointment_id, external_reference_id, record FROM rm_waitlist ORDER BY seq")]
            return holds, entries

    live = await snapshot()
    for batch_size in (20_000, 2):  # all folded and loaded by COPY; later changes as statements
        report = await rebuild(runtime.pool, runtime.store, ["holds_waitlist"], batch_size=batch_size)
        assert report["holds_waitlist"]["rows"] == {"rm_holds": 4, "rm_waitlist": 5}
        assert await snapshot() == live


async def test_an_entry_on_two_window_days_is_offered_on_one_and_leaves_the_other(runtime, http):
    """An entry without a session queues on both windows of its day. Its offer and its leaving the other queue
    are events on two streams of one commit: when it joins with a place open in one window (days 5 and 6), and
    when a cancel frees one (days 3 and 4). Stream ids sort by random window ids, so each case is run with the
    offering stream sorting first and last. The read models must end as decided whichever stream's events the
    commit holds first, as written and after a rebuild."""
    api = await setup_clinic(await new_org(runtime, http), max_slots=1)
    for days_ahead, offering, open_at_join in ((3, 0, False), (4, 1, False), (5, 0, True), (6, 1, True)):
        booked = {}
        for session, hhmm in (("Morning", "10:00"), ("Evening", "18:00")):
            status, body = await api.post("/v1/appointments", _create(api, days_ahead, 10 * days_ahead + len(booked),
                                                                      hhmm))
            assert status == 201, body
            booked[session] = body["appointment_id"]
        async with runtime.pool.acquire() as conn:
            window = {s: await conn.fetchval("SELECT window_id FROM rm_appointments WHERE appointment_id = $1", a)
                      for s, a in booked.items()}
        first, last = sorted(window, key=lambda s: wd.stream_id(window[s], local_date(api, days_ahead)))
        offered_on, other = (first, last) if offering == 0 else (last, first)

        async def cancel(session: str) -> None:
            status, body = await api.patch(f"/v1/appointments/{booked[session]}", {"status": "cancelled"})
            assert status == 200, body
        if open_at_join:
            await cancel(offered_on)
        status, entry = await api.post("/v1/waitlist", {
            "appointment_type": "general checkup", "date": local_date(api, days_ahead),
            "patient_name": f"Waiting {days_ahead}", "parent_phone": f"+155540000{days_ahead:02d}"})
        assert status == 201 and entry["data"]["status"] == ("offered" if open_at_join else "waiting"), entry
        if not open_at_join:
            await cancel(offered_on)
        status, body = await api.get(f"/v1/waitlist/{entry['waitlist_id']}")
        assert status == 200 and body["data"]["status"] == "offered" and body["data"]["hold_id"], body
        assert await _availability(api, days_ahead, offered_on) == {"booked": 0, "held": 1, "available": 0}
        await cancel(other)  # the entry left that queue: the place freed there is nobody's offer
        assert await _availability(api, days_ahead, other) == {"booked": 0, "held": 0, "available": 1}
        status, body = await api.get(f"/v1/waitlist/{entry['waitlist_id']}")
        assert body["data"]["status"] == "offered", body

    async def snapshot():
        async with runtime.pool.acquire() as conn:
            return [tuple(r) for r in await conn.fetch(
                "SELECT w.waitlist_id, w.status, w.hold_id, h.stream_id, h.status FROM rm_waitlist w"
                " JOIN rm_holds h USING (hold_id) ORDER BY w.waitlist_id")]
    live = await snapshot()
    assert [(row[1], row[4]) for row in live] == [("offered", "held")] * 4
    await rebuild(runtime.pool, runtime.store, ["holds_waitlist"])
    assert await snapshot() == live


async def _waitlist(api, days_ahead: int = 3) -> list[dict]:
    status, body = await api.get(f"/v1/waitlist?date={local_date(api, days_ahead)}")
    assert status == 200, body
    return body["data"]


# -- the same over Kafka -----------------------------------------------------------------------------------

async def _send(rt: Runtime, bootstrap: str, prefix: str, commands: list[dict]) -> list[dict]:
    """Publish the commands (one routing key) and wait for each one's result, in order."""
    await publish(bootstrap, f"{prefix}.commands", [encoded(c, key="k") for c in commands])
    wanted = {c["command_id"] for c in commands}
    records = await read_topic(bootstrap, f"{prefix}.command-results",
                               lambda recs: wanted <= set(results_by_command(recs)))
    results = results_by_command(records)
    return [results[c["command_id"]][0] for c in commands]


async def test_holds_and_the_waitlist_over_kafka(kafka_runtime, http, kafka_bootstrap, topic_prefix):
    rt = kafka_runtime
    api = await setup_clinic(await new_org(rt, http), max_slots=20)
    clock = controlled(rt)

    def cmd(type_: str, payload: dict | None = None, **ids) -> dict:
        return command(api.org_id, type_, payload, **ids)

    results = await _send(rt, kafka_bootstrap, topic_prefix,
                          [cmd("create_hold", _hold_body(api, 3)) for _ in range(200)])
    held = [r["data"]["hold_id"] for r in results if r["ok"]]
    assert len(held) == 20 and {r["status"] for r in results if r["ok"]} == {201}
    assert Counter(r["error"]["code"] for r in results if not r["ok"]) == {"SLOT_FULL": 180}
    (full,) = await _send(rt, kafka_bootstrap, topic_prefix, [cmd("create_appointment", _create(api, 3, 1))])
    assert full["error"]["code"] == "SLOT_FULL"
    results = await _send(rt, kafka_bootstrap, topic_prefix, [
        cmd("confirm_hold", {"patient_name": f"K{n}", "parent_phone": f"+1555400{n:04d}"}, hold_id=h)
        for n, h in enumerate(held)])
    assert [r["status"] for r in results] == [201] * 20, results
    assert await _availability(api, 3) == {"booked": 20, "held": 0, "available": 0}

    # expiry: 20 one-minute holds on another date, then the clock moves on
    results = await _send(rt, kafka_bootstrap, topic_prefix,
                          [cmd("create_hold", _hold_body(api, 4, minutes=1)) for _ in range(20)])
    assert all(r["ok"] for r in results), results
    (released,) = await _send(rt, kafka_bootstrap, topic_prefix, [cmd("release_hold", hold_id=results[0]["data"]["hold_id"])])
    assert released["ok"] and released["data"]["status"] == "released"
    clock.offset = dt.timedelta(seconds=61)
    assert await _availability(api, 4) == {"booked": 0, "held": 0, "available": 20}
    assert await rt.sweeper.sweep() == 19
    results = await _send(rt, kafka_bootstrap, topic_prefix, [cmd("create_appointment", _create(api, 4, 500 + n))
                                                              for n in range(21)])
    assert [r["status"] for r in results] == [201] * 20 + [409]

    # the waitlist: a full day (this date's capacity set to 5), 5 waiting, 3 cancels a few minutes apart
    window = api.ids["windows"][(dt.date.fromisoformat(local_date(api, 6)).strftime("%A").lower(), "Morning")]
    status, body = await api.patch(f"/v1/schedule-tracking/{window}/{local_date(api, 6)}", {"max_slots": 5})
    assert status == 200, body
    booked = await _send(rt, kafka_bootstrap, topic_prefix, [cmd("create_appointment", _create(api, 6, 700 + n))
                                                             for n in range(5)])
    assert [r["status"] for r in booked] == [201] * 5
    joins = await _send(rt, kafka_bootstrap, topic_prefix, [cmd("join_waitlist", {
        "appointment_type": api.ids["checkup"], "date": local_date(api, 6), "session": "Morning", "patient_name": f"W{n}",
        "parent_phone": f"+1555500{n:04d}"}) for n in range(5)])
    assert [r["data"]["position"] for r in joins] == [1, 2, 3, 4, 5]
    entries = [r["data"]["waitlist_id"] for r in joins]
    for i in range(3):
        clock.offset = dt.timedelta(seconds=61) + dt.timedelta(minutes=5 * i)
        cancel, create = await _send(rt, kafka_bootstrap, topic_prefix, [
            cmd("cancel_appointment", appointment_id=booked[i]["data"]["appointment_id"]),
            cmd("create_appointment", _create(api, 6, 800 + i))])
        assert cancel["ok"] and create["error"]["code"] == "SLOT_FULL"
    queue = await _waitlist(api, 6)
    assert [e["status"] for e in queue] == ["offered"] * 3 + ["waiting"] * 2
    clock.offset = dt.timedelta(seconds=61) + dt.timedelta(minutes=16)
    assert await rt.sweeper.sweep() == 1
    queue = await _waitlist(api, 6)
    assert [e["status"] for e in queue] == ["expired", "offered", "offered", "offered", "waiting"]
    confirmed = await _send(rt, kafka_bootstrap, topic_prefix, [cmd("confirm_hold", hold_id=e["hold_id"])
                                                                for e in queue[1:4]])
    assert [r["status"] for r in confirmed] == [201] * 3, confirmed
    (left,) = await _send(rt, kafka_bootstrap, topic_prefix, [cmd("leave_waitlist", waitlist_id=entries[4])])
    assert left["ok"] and left["data"]["status"] == "left"
    queue = await _waitlist(api, 6)
    assert [e["status"] for e in queue] == ["expired", "booked", "booked", "booked", "left"]
    assert await _availability(api, 6) == {"booked": 5, "held": 0, "available": 0}


async def test_raising_a_windows_capacity_offers_the_new_places_to_the_waitlist(runtime, http):
    api = await setup_clinic(await new_org(runtime, http), max_slots=1)
    status, body = await api.post("/v1/appointments", _create(api, 3, 1))
    assert status == 201, body
    entries = []
    for n in range(3):
        status, body = await api.post("/v1/waitlist", {"appointment_type": api.ids["checkup"], "session": "Morning",
                                                       "date": local_date(api, 3), "patient_name": f"W{n}",
                                                       "parent_phone": f"+1555600{n:04d}"})
        assert status == 201 and body["data"]["status"] == "waiting", body
        entries.append(body["waitlist_id"])
    window = api.ids["windows"][(dt.date.fromisoformat(local_date(api, 3)).strftime("%A").lower(), "Morning")]
    status, body = await api.patch(f"/v1/appointment-slots/{window}", {"max_slots": 3})
    assert status == 200, body
    assert [e["status"] for e in await _waitlist(api)] == ["offered", "offered", "waiting"]
    assert await _availability(api, 3) == {"booked": 1, "held": 2, "available": 0}
