"""Route handlers: translate HTTP to commands and queries, and results to the documented shapes."""
from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel

from domain.errors import not_found, validation
from projections import queries
from schemas.http import (  # noqa: F401  (re-exported for the route table)
    Appointment, AvailabilityQuery, BranchOut, CreateAppointment, CreateBranch, CreateService, CreateWindow,
    GeneralSettings, ReadQuery, Regenerate, SearchQuery, ServiceOut, SettingsPatch, TrackingQuery, TrackingRecord,
    UpdateAppointment, UpdateWindow, UpdateWindowDay, WindowOut, WindowsQuery,
)
from services import commands
from services.handler import Meta, Outcome
from services.keys import Principal
from services.runtime import Runtime


def json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


REQUEST_ID = web.RequestKey("request_id", str)


class ConfigOut(BaseModel):
    general: GeneralSettings


def ok(data: Any, status: int = 200, position: int | None = None, **top: Any) -> web.Response:
    headers = {"X-Position": str(position)} if position is not None else None
    return web.json_response({"success": True, **top, "data": data}, status=status, headers=headers,
                             dumps=json_text)


def answer(outcome: Outcome, **top: Any) -> web.Response:
    return ok(outcome.data, outcome.status, outcome.position, **top)


def meta(request: web.Request, principal: Principal) -> Meta:
    return Meta(request_id=request[REQUEST_ID], actor=principal.key_id)


async def _read_after(runtime: Runtime, projection: str, min_position: int | None) -> None:
    if min_position is not None:
        await runtime.wait_for_projection(projection, min_position)


# -- configuration -------------------------------------------------------------------------------------

async def get_config(request, runtime: Runtime, principal: Principal) -> web.Response:
    catalog = await runtime.handler.catalog(principal.org_id)
    return ok({"general": catalog.settings.as_dict()})


async def patch_config(request, runtime: Runtime, principal: Principal, body: SettingsPatch) -> web.Response:
    return answer(await commands.change_settings(runtime.handler, principal.org_id, body, meta(request, principal)))


async def list_services(request, runtime: Runtime, principal: Principal) -> web.Response:
    catalog = await runtime.handler.catalog(principal.org_id)
    return ok([vars(s) for s in sorted(catalog.services.values(), key=lambda s: s.name.casefold())])


async def create_service(request, runtime: Runtime, principal: Principal, body: CreateService) -> web.Response:
    return answer(await commands.create_service(runtime.handler, principal.org_id, body, meta(request, principal)))


async def list_branches(request, runtime: Runtime, principal: Principal) -> web.Response:
    catalog = await runtime.handler.catalog(principal.org_id)
    return ok([vars(b) for b in sorted(catalog.branches.values(), key=lambda b: b.name.casefold())])


async def create_branch(request, runtime: Runtime, principal: Principal, body: CreateBranch) -> web.Response:
    return answer(await commands.create_branch(runtime.handler, principal.org_id, body, meta(request, principal)))


async def list_windows(request, runtime: Runtime, principal: Principal, query: WindowsQuery) -> web.Response:
    catalog = await runtime.handler.catalog(principal.org_id)
    if query.branch_id is not None:
        catalog.resolve_branch(query.branch_id)
    windows = [w.as_dict() for w in sorted(catalog.windows.values(),
                                           key=lambda w: (w.branch_id, w.day_of_week, w.start_time, w.window_id))
               if query.branch_id in (None, w.branch_id)]
    return ok(windows)


async def create_window(request, runtime: Runtime, principal: Principal, body: CreateWindow) -> web.Response:
    return answer(await commands.create_window(runtime.handler, principal.org_id, body, meta(request, principal)))


async def update_window(request, runtime: Runtime, principal: Principal, body: UpdateWindow) -> web.Response:
    return answer(await commands.update_window(runtime.handler, principal.org_id, request.match_info["window_id"],
                                               body, meta(request, principal)))


async def disable_window(request, runtime: Runtime, principal: Principal) -> web.Response:
    return answer(await commands.disable_window(runtime.handler, principal.org_id, request.match_info["window_id"],
                                                meta(request, principal)))


# -- availability and schedule tracking ----------------------------------------------------------------

async def availability(request, runtime: Runtime, principal: Principal, query: AvailabilityQuery) -> web.Response:
    catalog = await runtime.handler.catalog(principal.org_id)
    if query.branch_id is not None:
        catalog.resolve_branch(query.branch_id)
    service_id = catalog.resolve_service(query.appointment_type).service_id if query.appointment_type else None
    await _read_after(runtime, "schedule_tracking", query.min_position)
    async with runtime.pool.acquire() as conn:
        rows = await queries.availability(conn, catalog, query.date, query.branch_id, service_id, query.session)
    return ok(rows)


def _date_range(date_from: dt.date, date_to: dt.date) -> None:
    if date_to < date_from:
        raise validation("date_to", "must not be before date_from")
    if (date_to - date_from).days + 1 > 92:
        raise validation("date_to", "the range may span at most 92 days")


async def schedule_tracking(request, runtime: Runtime, principal: Principal, query: TrackingQuery) -> web.Response:
    _date_range(query.date_from, query.date_to)
    catalog = await runtime.handler.catalog(principal.org_id)
    if query.branch_id is not None:
        catalog.resolve_branch(query.branch_id)
    if query.window_id is not None:
        catalog.window(query.window_id)
    await _read_after(runtime, "schedule_tracking", query.min_position)
    async with runtime.pool.acquire() as conn:
        rows = await queries.schedule_tracking(conn, catalog, query.date_from, query.date_to, query.branch_id,
                                               query.window_id)
    return ok(rows)


async def update_window_day(request, runtime: Runtime, principal: Principal, body: UpdateWindowDay) -> web.Response:
    return answer(await commands.update_window_day(runtime.handler, principal.org_id, request.match_info["window_id"],
                                                   request.match_info["date"], body, meta(request, principal)))


async def regenerate(request, runtime: Runtime, principal: Principal, body: Regenerate) -> web.Response:
    """Recount every window-day in the range from the log itself and correct the read model where it differs."""
    _date_range(body.date_from, body.date_to)
    catalog = await runtime.handler.catalog(principal.org_id)
    async with runtime.pool.acquire() as conn:
        streams = await queries.window_day_streams(conn, principal.org_id, body.date_from, body.date_to)
    days = await runtime.handler.window_days(principal.org_id, streams)
    corrections = []
    async with runtime.pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('schedule_tracking'))")
        for day in days:
            truth = {a["appointment_id"]: a for a in day.appointments.values() if a["status"] != "cancelled"}
            rows = await conn.fetch("SELECT appointment_id FROM rm_schedule_bookings WHERE window_id = $1"
                                    " AND date = $2", day.window_id, dt.date.fromisoformat(day.date))
            held = {r["appointment_id"] for r in rows}
            if held != set(truth):
                corrections.append({"window_id": day.window_id, "date": day.date, "was": len(held),
                                    "now": len(truth)})
                await conn.execute("DELETE FROM rm_schedule_bookings WHERE window_id = $1 AND date = $2",
                                   day.window_id, dt.date.fromisoformat(day.date))
                await conn.executemany(
                    "INSERT INTO rm_schedule_bookings VALUES ($1, $2, $3, $4, $5) ON CONFLICT (appointment_id)"
                    " DO UPDATE SET window_id = EXCLUDED.window_id, date = EXCLUDED.date",
                    [(a["appointment_id"], principal.org_id, day.window_id, dt.date.fromisoformat(day.date),
                      a["appointment_type"]) for a in truth.values()])
        records = await queries.schedule_tracking(conn, catalog, body.date_from, body.date_to)
    return ok({"date_from": body.date_from.isoformat(), "date_to": body.date_to.isoformat(),
               "records": len(records), "window_days_checked": len(days), "corrections": corrections})


# -- appointments --------------------------------------------------------------------------------------

async def create_appointment(request, runtime: Runtime, principal: Principal, body: CreateAppointment) -> web.Response:
    outcome = await commands.create_appointment(runtime.handler, principal.org_id, body, meta(request, principal))
    top: dict[str, Any] = {"appointment_id": outcome.data["appointment_id"], "token": outcome.data["token"]}
    if outcome.idempotent:
        top = {"idempotent": True, **top}
    return answer(outcome, **top)


async def get_appointment(request, runtime: Runtime, principal: Principal, query: ReadQuery) -> web.Response:
    appointment_id = request.match_info["appointment_id"]
    await _read_after(runtime, "appointments", query.min_position)
    async with runtime.pool.acquire() as conn:
        record = await queries.appointment(conn, principal.org_id, appointment_id)
    if record is None:
        raise not_found("appointment", appointment_id)
    return ok(record)


async def update_appointment(request, runtime: Runtime, principal: Principal, body: UpdateAppointment) -> web.Response:
    return answer(await commands.update_appointment(runtime.handler, principal.org_id,
                                                    request.match_info["appointment_id"], body,
                                                    meta(request, principal)))


async def search_appointments(request, runtime: Runtime, principal: Principal, query: SearchQuery) -> web.Response:
    filters = query.model_dump(exclude={"limit", "cursor", "min_position"})
    if query.appointment_type:
        catalog = await runtime.handler.catalog(principal.org_id)
        filters["appointment_type"] = catalog.resolve_service(query.appointment_type).service_id
    await _read_after(runtime, "appointments", query.min_position)
    async with runtime.pool.acquire() as conn:
        items, next_cursor = await queries.search(conn, principal.org_id, filters, query.limit, query.cursor)
    return ok(items, next_cursor=next_cursor)


async def appointment_history(request, runtime: Runtime, principal: Principal) -> web.Response:
    appointment_id = request.match_info["appointment_id"]
    async with runtime.pool.acquire() as conn:
        await runtime.handler.locate(principal.org_id, appointment_id, conn)
        events = await queries.history(conn, principal.org_id, appointment_id)
    return ok(events)

