"""Read-model queries the gateway serves."""
from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from typing import Any

import asyncpg

from domain import windowday as wd
from domain.patients import phone_key
from domain.catalog import Catalog, Window
from domain.errors import DomainError, validation
from domain.timerules import days_between, iso_utc, parse_day, parse_instant
from schemas.text import text_problem


async def appointment(conn: asyncpg.Connection, org_id: str, appointment_id: str) -> dict[str, Any] | None:
    return await conn.fetchval("SELECT record FROM rm_appointments WHERE org_id = $1 AND appointment_id = $2",
                               uuid.UUID(org_id), appointment_id)


def encode_cursor(date: str, appointment_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([date, appointment_id]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.date, str]:
    try:
        date, appointment_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(appointment_id, str) or text_problem(appointment_id):
            raise ValueError
        return parse_day(date), appointment_id
    except (ValueError, TypeError, DomainError):
        raise validation("cursor", "is not a cursor this API returned") from None


async def search(conn: asyncpg.Connection, org_id: str, filters: dict[str, Any], limit: int,
                 cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
    """Appointments in (date, appointment_id) order, keyset-paginated."""
    where = ["org_id = $1"]
    args: list[Any] = [uuid.UUID(org_id)]

    def add(sql: str, value: Any) -> None:
        args.append(value)
        where.append(sql.replace("?", f"${len(args)}"))

    if filters.get("date"):
        add("date = ?", filters["date"])
    if filters.get("date_from"):
        add("date >= ?", filters["date_from"])
    if filters.get("date_to"):
        add("date <= ?", filters["date_to"])
    for name in ("branch_id", "status", "assigned_doctor", "external_reference_id", "appointment_type"):
        if filters.get(name):
            add(f"{name} = ?", filters[name])
    if filters.get("parent_phone"):
        add("phone = ?", phone_key(filters["parent_phone"], filters.get("phone_region")))
    if filters.get("patient_id"):
        add("patient_id = ?", filters["patient_id"])
    if cursor:
        after_date, after_id = decode_cursor(cursor)
        args.extend([after_date, after_id])
        where.append(f"(date, appointment_id) > (${len(args) - 1}, ${len(args)})")
    args.append(limit + 1)
    rows = await conn.fetch(f"SELECT date, appointment_id, record FROM rm_appointments WHERE {' AND '.join(where)}"
                            f" ORDER BY date, appointment_id LIMIT ${len(args)}", *args)
    items = [row["record"] for row in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = encode_cursor(last["date"].isoformat(), last["appointment_id"])
    return items, next_cursor


async def _fill_and_days(conn: asyncpg.Connection, org_id: str, date_from: dt.date, date_to: dt.date):
    org = uuid.UUID(org_id)
    fills: dict[tuple[str, str], dict[str, int]] = {}
    for row in await conn.fetch(
            "SELECT window_id, date, service_id, count(*) AS n FROM rm_schedule_bookings"
            " WHERE org_id = $1 AND date BETWEEN $2 AND $3 GROUP BY window_id, date, service_id",
            org, date_from, date_to):
        fills.setdefault((row["window_id"], row["date"].isoformat()), {})[row["service_id"]] = row["n"]
    days = {(row["window_id"], row["date"].isoformat()): row for row in await conn.fetch(
        "SELECT window_id, date, status, max_slots FROM rm_window_days WHERE org_id = $1 AND date BETWEEN $2 AND $3",
        org, date_from, date_to)}
    return fills, days


def day_view(window: Window, day: wd.WindowDay, filled: dict[str, int] | None = None) -> dict[str, Any]:
    """One window-day as schedule tracking shows it; `filled` counts per service (default: the day's own)."""
    filled = day.filled_by_service() if filled is None else filled
    return {
        "window_id": window.window_id, "branch_id": window.branch_id, "date": day.date, "session": window.session,
        "batch": window.batch, "start_time": window.start_time, "end_time": window.end_time,
        "service_id": window.service_id, "status": day.effective_status(window), "max_slots": day.capacity(window),
        "filled_count": sum(filled.values()), "filled_by_service": dict(filled),
    }


def _day_view(window: Window, date: str, days: dict, fills: dict) -> dict[str, Any]:
    own = days.get((window.window_id, date))
    day = wd.WindowDay(window.window_id, date, status=own["status"] if own else None,
                       max_slots=own["max_slots"] if own else None)
    return day_view(window, day, fills.get((window.window_id, date), {}))


def _windows(catalog: Catalog, branch_id: str | None, window_id: str | None) -> list[Window]:
    found = [w for w in catalog.windows.values()
             if (branch_id is None or w.branch_id == branch_id) and (window_id is None or w.window_id == window_id)]
    return sorted(found, key=lambda w: (w.start_time, w.window_id))


async def schedule_tracking(conn: asyncpg.Connection, catalog: Catalog, date_from: dt.date, date_to: dt.date,
                            branch_id: str | None = None, window_id: str | None = None) -> list[dict[str, Any]]:
    """One record per window per date it runs on, whether or not anything is booked."""
    fills, days = await _fill_and_days(conn, catalog.org_id, date_from, date_to)
    windows = _windows(catalog, branch_id, window_id)
    return [_day_view(w, day.isoformat(), days, fills)
            for day in days_between(date_from, date_to) for w in windows if w.occurs_on(day)]


async def _held(conn: asyncpg.Connection, org_id: str, date: dt.date, now: dt.datetime) -> dict:
    """Live holds per (window, service) on a date: an expired hold never counts, swept or not."""
    held: dict[str, dict[str, int]] = {}
    for row in await conn.fetch(
            "SELECT window_id, service_id, count(*) AS n FROM rm_holds WHERE org_id = $1 AND date = $2"
            " AND status = 'held' AND expires_at > $3 GROUP BY window_id, service_id", uuid.UUID(org_id), date, now):
        held.setdefault(row["window_id"], {})[row["service_id"]] = row["n"]
    return held


async def availability(conn: asyncpg.Connection, catalog: Catalog, date: dt.date, branch_id: str | None,
                       service_id: str | None, session: str | None, now: dt.datetime) -> list[dict[str, Any]]:
    """Per window-day: `booked` (active appointments), `held` (live holds) and what is left, `available`."""
    rows = []
    held_by_window = await _held(conn, catalog.org_id, date, now)
    for view in await schedule_tracking(conn, catalog, date, date, branch_id):
        if session and view["session"].casefold() != session.casefold():
            continue
        if service_id and view["service_id"] not in (None, service_id):
            continue
        filled = view.pop("filled_by_service")
        view.pop("filled_count")
        held = held_by_window.get(view["window_id"], {})
        open_ = view["status"] == "OPEN"

        def left(sid: str) -> int:
            return max(view["max_slots"] - filled.get(sid, 0) - held.get(sid, 0), 0) if open_ else 0

        if service_id:
            view.update(appointment_type=service_id, booked=filled.get(service_id, 0),
                        held=held.get(service_id, 0), available=left(service_id))
        else:
            types = [view["service_id"]] if view["service_id"] else sorted(catalog.services)
            view["by_service"] = {
                sid: {"name": catalog.services[sid].name, "booked": filled.get(sid, 0), "held": held.get(sid, 0),
                      "available": left(sid)}
                for sid in types}
            view["booked"] = sum(filled.values())
            view["held"] = sum(held.values())
            view["available"] = sum(s["available"] for s in view["by_service"].values())
        rows.append(view)
    return rows


# -- holds and the waitlist ------------------------------------------------------------------------------

def hold_view(record: dict[str, Any], status: str, appointment_id: str | None, now: dt.datetime) -> dict[str, Any]:
    """A hold as the API shows it: `expired` from `expires_at` on, whether or not the sweeper has been by."""
    if status == "held" and now >= parse_instant(record["expires_at"], "expires_at"):
        status = "expired"
    return {**record, "status": status, "appointment_id": appointment_id}


async def hold(conn: asyncpg.Connection, org_id: str, hold_id: str, now: dt.datetime) -> dict[str, Any] | None:
    row = await conn.fetchrow("SELECT record, status, appointment_id FROM rm_holds WHERE org_id = $1 AND hold_id = $2",
                              uuid.UUID(org_id), hold_id)
    return None if row is None else hold_view(row["record"], row["status"], row["appointment_id"], now)


# An entry's place in line: waiting entries that share one of its window-days and joined no later.
_ENTRIES = """
SELECT w.record, w.status, w.hold_id, w.offer_expires_at, w.appointment_id, w.streams,
       CASE WHEN w.status = 'waiting' THEN (SELECT count(*) FROM rm_waitlist o WHERE o.org_id = w.org_id
            AND o.date = w.date AND o.status = 'waiting' AND o.streams && w.streams AND o.seq <= w.seq) END AS position
FROM rm_waitlist w WHERE w.org_id = $1"""


def entry_view(row: asyncpg.Record | dict[str, Any]) -> dict[str, Any]:
    record = dict(row["record"])
    streams = record.pop("streams")
    offered_until = row["offer_expires_at"]
    return {**record, "window_ids": [wd.split_stream_id(s)[0] for s in streams], "streams": streams,
            "status": row["status"], "position": row["position"], "hold_id": row["hold_id"],
            "offer_expires_at": offered_until and iso_utc(offered_until), "appointment_id": row["appointment_id"]}


async def waitlist_entry(conn: asyncpg.Connection, org_id: str, waitlist_id: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(_ENTRIES + " AND w.waitlist_id = $2", uuid.UUID(org_id), waitlist_id)
    return None if row is None else entry_view(row)


async def waitlist_by_ref(conn: asyncpg.Connection, org_id: str, ref: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(_ENTRIES + " AND w.external_reference_id = $2 AND w.status IN ('waiting', 'offered')",
                              uuid.UUID(org_id), ref)
    return None if row is None else entry_view(row)


async def waitlist(conn: asyncpg.Connection, org_id: str, date: dt.date, branch_id: str | None,
                   service_id: str | None, status: str | None) -> list[dict[str, Any]]:
    """The date's entries in join order."""
    args: list[Any] = [uuid.UUID(org_id), date]
    where = " AND w.date = $2"
    for column, value in (("branch_id", branch_id), ("service_id", service_id), ("status", status)):
        if value is not None:
            args.append(value)
            where += f" AND w.{column} = ${len(args)}"
    return [entry_view(row) for row in await conn.fetch(_ENTRIES + where + " ORDER BY w.seq", *args)]


async def history(conn: asyncpg.Connection, org_id: str, appointment_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT global_position, event_type, data, metadata, recorded_at, stream_id FROM events"
        " WHERE coalesce(data->>'appointment_id', data->'appointment'->>'appointment_id') = $1"
        " AND stream_id LIKE 'wd-%' AND org_id = $2 ORDER BY global_position",
        appointment_id, uuid.UUID(org_id))
    out = []
    for row in rows:
        data = row["data"]
        if "appointment" in data:
            changed = data["appointment"] if row["event_type"] == "appointment.booked" else {
                k: v for k, v in data["appointment"].items() if data.get("previous", {}).get(k, v) != v}
        elif "changes" in data:
            changed = {**data["changes"], **({"status": data["status"]} if "status" in data else {})}
        else:
            changed = {k: v for k, v in data.items() if k != "appointment_id"}
        out.append({"type": row["event_type"], "time": row["recorded_at"].isoformat(),
                    "actor": row["metadata"].get("actor"), "request_id": row["metadata"].get("request_id"),
                    "command_id": row["metadata"].get("command_id"), "position": row["global_position"],
                    "window_day": row["stream_id"], "changed": changed})
    return out
