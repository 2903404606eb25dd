"""Loading window-days from the log in bulk (UnitOfWork.days): a process that starts on a busy calendar reads
every day's events at once, and a cached day behind the log reads only what it missed. Either way a day holds
exactly its stream's events, and the read stays one index range scan per day however large it is."""
from __future__ import annotations

import datetime as dt

from domain import events as ev
from domain import windowday as wd
from services.handler import CommandHandler
from services.outcome import Meta
from tests.builders import create_body
from tests.integration.test_command_handler import DAY, at, clinic


def state(day: wd.WindowDay) -> tuple:
    return day.version, day.last_token, dict(day.appointments)


async def folded(store, stream: str, catalog) -> tuple:
    day = wd.WindowDay(*wd.split_stream_id(stream), phone_region=catalog.settings.phone_region)
    for stored in await store.read_stream(stream):
        day.apply(ev.from_stored(stored.type, stored.data))
    return state(day)


async def book(handler: CommandHandler, org_id: str, count: int, first_phone: int) -> list[str]:
    booked = []
    for n in range(count):
        day = DAY + dt.timedelta(days=n % 3)
        hhmm = ("09:00", "09:30", "17:00", "17:30")[(n // 3) % 4]
        outcome = await handler.create_appointment(org_id, create_body(at(hhmm, day), f"+1415555{first_phone + n:04d}"),
                                                   Meta())
        booked.append(outcome.data["appointment_id"])
    return booked


async def test_days_loaded_cold_and_caught_up_hold_exactly_their_streams_events(pool, store):
    writer, reader = CommandHandler(pool, store), CommandHandler(pool, store)  # two processes' caches
    org_id = await clinic(writer, max_slots=50)
    booked = await book(writer, org_id, 36, 0)
    for appointment_id in booked[:6]:  # a change after its booking: folded out of order, it would be lost
        await writer.update_appointment(org_id, appointment_id, {"status": "cancelled"}, Meta())
    catalog = await reader.catalog(org_id)
    async with pool.acquire() as conn:
        streams = [r["stream_id"] for r in await conn.fetch("SELECT stream_id FROM streams WHERE stream_id LIKE 'wd-%'"
                                                             " ORDER BY stream_id")]
        assert len(streams) == 6  # 3 dates × morning and evening
        cold = await reader.uow.days(conn, {s: catalog for s in streams})
    assert sum(a.status == "cancelled" for s in streams for a in cold[s].appointments.values()) == 6
    assert sum(len(cold[s].appointments) for s in streams) == 36
    for stream in streams:
        assert state(cold[stream]) == await folded(store, stream, catalog)

    await book(writer, org_id, 12, 100)  # the log moves on; the reader's cached days fall behind
    for appointment_id in booked[6:12]:
        await writer.update_appointment(org_id, appointment_id, {"status": "cancelled"}, Meta())
    async with pool.acquire() as conn:
        caught_up = await reader.uow.days(conn, {s: catalog for s in streams})
    for stream in streams:
        assert caught_up[stream] is cold[stream]  # the cached day itself, caught up in place
        assert state(caught_up[stream]) == await folded(store, stream, catalog)
    assert sum(a.status == "cancelled" for s in streams for a in caught_up[s].appointments.values()) == 12
    assert sum(len(caught_up[s].appointments) for s in streams) == 48


async def test_reading_many_days_is_an_index_range_scan_per_day_never_a_join_over_the_log(pool, store):
    """However many days and whatever the planner prefers (nested loops turned off here, as a plan for ~100k
    (stream, version) pairs once preferred a hash join over the whole log), each day is one range scan of the
    (stream, version) index, and nothing sorts the events."""
    from services.unit_of_work import _EVENTS_AFTER

    streams = [f"wd-{n:05d}-2030-01-01" for n in range(2000)]
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_nestloop = off")
        plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN {_EVENTS_AFTER}", streams, [0] * len(streams),
                                                         [500] * len(streams)))
    assert "Nested Loop" in plan and "events_stream_id_stream_version_key" in plan, plan
    assert "Hash" not in plan and "Sort" not in plan and "Seq Scan on events" not in plan, plan
