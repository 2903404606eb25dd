"""Loading window-days from the log in bulk (UnitOfWork.days): a process that starts on a busy calendar reads
every day's events at once, and a cached day behind the log reads only what it missed. Either way a day holds
exactly its stream's events, and the read stays one index range scan per day however large it is."""
from __future__ import annotations

import asyncio
import datetime as dt

import orjson

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


# -- snapshots (migration 015) -------------------------------------------------------------------------------

async def book_in_one_day(handler: CommandHandler, org_id: str, count: int, first_phone: int) -> list[str]:
    return [(await handler.create_appointment(org_id, create_body(at("09:30"), f"+1415556{first_phone + n:04d}"),
                                              Meta())).data["appointment_id"] for n in range(count)]


async def snapshot_row(pool, stream: str):
    async with pool.acquire() as conn:
        return await conn.fetchrow("SELECT version, format, state FROM window_day_snapshots WHERE stream_id = $1",
                                   stream)


async def test_a_long_read_is_snapshotted_and_the_next_fresh_read_starts_from_it(pool, store):
    from services.unit_of_work import SNAPSHOT_AFTER

    writer = CommandHandler(pool, store)
    org_id = await clinic(writer, max_slots=500)
    booked = await book_in_one_day(writer, org_id, SNAPSHOT_AFTER + 5, 0)
    for appointment_id in booked[:3]:
        await writer.update_appointment(org_id, appointment_id, {"status": "cancelled"}, Meta())
    catalog = await writer.catalog(org_id)
    async with pool.acquire() as conn:
        (stream,) = [r[0] for r in await conn.fetch("SELECT stream_id FROM streams WHERE stream_id LIKE 'wd-%'")]

    first = CommandHandler(pool, store)  # a fresh process: no snapshot yet, so it folds every event, and keeps them
    async with pool.acquire() as conn:
        await first.uow.days(conn, {stream: catalog})
    await first.uow.close()
    row = await snapshot_row(pool, stream)
    assert (row["version"], row["format"]) == (SNAPSHOT_AFTER + 8, wd.SNAPSHOT_FORMAT)
    assert sum(1 for a in row["state"]["appointments"] if a[11] == "cancelled") == 3

    await book_in_one_day(writer, org_id, 4, 500)  # the log moves on past the snapshot
    await writer.update_appointment(org_id, booked[3], {"status": "cancelled"}, Meta())
    second, third = CommandHandler(pool, store), CommandHandler(pool, store)
    async with pool.acquire() as conn:
        from_days = (await second.uow.days(conn, {stream: catalog}))[stream]
        from_one = await third.uow.day(stream, conn, catalog)
    for day in (from_days, from_one):
        assert state(day) == await folded(store, stream, catalog)
        assert day.duplicate_of("+14155560004", day.appointments[booked[4]].appointment_type) == booked[4]
        assert day.duplicate_of("+14155560003", day.appointments[booked[3]].appointment_type) is None
    assert second.uow._snapshotted[stream] == third.uow._snapshotted[stream] == SNAPSHOT_AFTER + 8

    # It really is read: a snapshot's word is taken for what it holds (so one that does not fit is never used).
    async with pool.acquire() as conn:
        await conn.execute("UPDATE window_day_snapshots SET state = (state::jsonb || '{\"status\": \"CLOSED\"}')::json"
                           " WHERE stream_id = $1", stream)
        assert (await CommandHandler(pool, store).uow.day(stream, conn, catalog)).status == "CLOSED"


async def test_a_snapshot_that_does_not_fit_is_ignored(pool, store):
    """Of another format (an older fold), made under another phone region, or ahead of the log: the day is read
    from the log instead."""
    writer = CommandHandler(pool, store)
    org_id = await clinic(writer, max_slots=50)
    await book_in_one_day(writer, org_id, 6, 0)
    catalog = await writer.catalog(org_id)
    async with pool.acquire() as conn:
        (stream,) = [r[0] for r in await conn.fetch("SELECT stream_id FROM streams WHERE stream_id LIKE 'wd-%'")]
        expected = await folded(store, stream, catalog)
        closed = wd.WindowDay(*wd.split_stream_id(stream), version=6, status="CLOSED",
                              phone_region=catalog.settings.phone_region)
        for version, fmt, region in ((6, "wd0-000000000000", None), (6, wd.SNAPSHOT_FORMAT, "IN"),
                                     (7, wd.SNAPSHOT_FORMAT, None)):
            closed.version, closed.phone_region = version, region or catalog.settings.phone_region
            await conn.execute("INSERT INTO window_day_snapshots (stream_id, version, format, state)"
                               " VALUES ($1, $2, $3, $4::text::json) ON CONFLICT (stream_id) DO UPDATE"
                               " SET version = EXCLUDED.version, format = EXCLUDED.format, state = EXCLUDED.state",
                               stream, version, fmt, orjson.dumps(closed.snapshot()).decode())
            fresh = CommandHandler(pool, store)
            assert state((await fresh.uow.days(conn, {stream: catalog}))[stream]) == expected, (version, fmt, region)
            assert (await fresh.uow.day(stream, conn, catalog)).status is None


async def test_stopping_snapshots_the_days_that_moved_on_but_not_one_being_decided(pool, store):
    from services.unit_of_work import SNAPSHOT_AFTER

    handler = CommandHandler(pool, store)
    org_id = await clinic(handler, max_slots=500)
    await book_in_one_day(handler, org_id, SNAPSHOT_AFTER, 0)  # folded as decided: cached, never read
    await handler.create_appointment(org_id, create_body(at("17:30"), "+14155550000"), Meta())
    async with pool.acquire() as conn:
        morning, evening = [r[0] for r in await conn.fetch(
            "SELECT stream_id FROM streams WHERE stream_id LIKE 'wd-%' ORDER BY version DESC")]
    await handler.uow.close()
    assert (await snapshot_row(pool, morning))["version"] == SNAPSHOT_AFTER
    assert await snapshot_row(pool, evening) is None  # one event: not worth a snapshot

    await book_in_one_day(handler, org_id, SNAPSHOT_AFTER, 100)
    async with handler.uow.locks([morning]):  # someone is deciding on it: its state may hold uncommitted bookings
        await handler.uow.close()
    assert (await snapshot_row(pool, morning))["version"] == SNAPSHOT_AFTER
    await handler.uow.close()
    assert (await snapshot_row(pool, morning))["version"] == 2 * SNAPSHOT_AFTER


async def test_two_processes_stopping_at_once_both_write_their_snapshots(pool, store):
    """Each holds the same busy days, taken in the opposite order; whichever is further along wins each day, and
    neither's writes are lost to the other (they once deadlocked, and one's were dropped)."""
    from domain.appointment import FIELDS

    streams = [f"wd-{n:036d}-2030-01-01" for n in range(40)]
    async with pool.acquire() as conn:
        await conn.executemany("INSERT INTO streams (stream_id, version) VALUES ($1, 300)", [(s,) for s in streams])

    def day(stream: str, version: int) -> wd.WindowDay:
        records = [[f"appt_{n:010d}"] + ["x"] * (len(FIELDS) - 1) for n in range(300)]
        return wd.WindowDay.from_snapshot(stream, {"version": version, "status": None, "max_slots": None,
                                                   "last_token": 0, "phone_region": None, "appointments": records,
                                                   "holders": [], "holds": [], "waiting": []})

    for attempt in range(3):
        first, second = CommandHandler(pool, store).uow, CommandHandler(pool, store).uow
        for n, stream in enumerate(streams):  # each further along on every other day
            first._remember(day(stream, 200 + attempt + 100 * (n % 2)))
        for n, stream in reversed(list(enumerate(streams))):
            second._remember(day(stream, 200 + attempt + 100 * ((n + 1) % 2)))
        await asyncio.gather(first.close(), second.close())
        async with pool.acquire() as conn:
            versions = await conn.fetch("SELECT version FROM window_day_snapshots WHERE stream_id = ANY($1)", streams)
        assert sorted(v[0] for v in versions) == [300 + attempt] * len(streams)
        async with pool.acquire() as conn:
            await conn.execute("UPDATE streams SET version = version + 1 WHERE stream_id = ANY($1)", streams)
