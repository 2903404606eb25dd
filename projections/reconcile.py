"""Schedule tracking checked against the log itself: each window-day's active bookings are recounted from its
events, and the read model corrected where it differs (`POST /v1/schedule-tracking/regenerate`)."""
from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import asyncpg

from domain import events as ev
from domain import windowday as wd
from projections.base import compile_writes
from projections.schedule import BOOKINGS, booking_writes


async def window_days(conn: asyncpg.Connection, org_id: str, date_from: dt.date,
                      date_to: dt.date) -> list[wd.WindowDay]:
    """The org's window-days in the date range that hold events, folded afresh from the log. Call it in a
    transaction."""
    # Locking the streams' rows holds off writers to these window-days (their append updates the row) until
    # the caller's transaction ends, so what is folded here and what the read model holds cannot drift apart.
    streams = await conn.fetch(
        "SELECT stream_id FROM streams WHERE org_id = $1 AND stream_id LIKE 'wd-%' AND right(stream_id, 10)"
        " BETWEEN $2 AND $3 ORDER BY stream_id FOR UPDATE", uuid.UUID(org_id), date_from.isoformat(),
        date_to.isoformat())
    rows = await conn.fetch("SELECT stream_id, event_type, data FROM events WHERE stream_id = ANY($1::text[])"
                            " ORDER BY stream_id, stream_version", [r["stream_id"] for r in streams])
    days: dict[str, wd.WindowDay] = {}
    for row in rows:
        day = days.get(row["stream_id"])
        if day is None:
            day = days[row["stream_id"]] = wd.WindowDay(*wd.split_stream_id(row["stream_id"]))
        day.apply(ev.from_stored(row["event_type"], row["data"]))
    return list(days.values())


async def reconcile(conn: asyncpg.Connection, org_id: str, date_from: dt.date,
                    date_to: dt.date) -> tuple[int, list[dict[str, Any]]]:
    """Correct the bookings of every window-day in the range; how many were checked, and what changed."""
    org = uuid.UUID(org_id)
    corrections = []
    async with conn.transaction():
        days = await window_days(conn, org_id, date_from, date_to)
        for day in days:
            truth = {a.appointment_id: a for a in day.appointments.values() if a.active}
            date = dt.date.fromisoformat(day.date)
            held = {r["appointment_id"] for r in await conn.fetch(
                f"SELECT appointment_id FROM {BOOKINGS} WHERE window_id = $1 AND date = $2",
                day.window_id, date)}
            if held == set(truth):
                continue
            corrections.append({"window_id": day.window_id, "date": day.date, "was": len(held), "now": len(truth)})
            await conn.execute(f"DELETE FROM {BOOKINGS} WHERE window_id = $1 AND date = $2", day.window_id, date)
            for statement in compile_writes(w for a in truth.values() for w in booking_writes(a.as_dict(), org)):
                await statement.run(conn)
    return len(days), corrections
