"""Route handlers: translate HTTP to commands and queries, and results to the documented shapes."""
from __future__ import annotations

import datetime as dt
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from domain import catalog as cat
from domain.errors import DomainError, not_found, validation
from projections import queries
from schemas.http import (  # noqa: F401  (re-exported for the route table)
    Appointment, AvailabilityQuery, BranchOut, CreateAppointment, CreateBranch, CreateService, CreateWindow,
    GeneralSettings, ReadQuery, Regenerate, SearchQuery, ServiceOut, SettingsPatch, TrackingQuery, TrackingRecord,
    UpdateAppointment, UpdateWindow, UpdateWindowDay, WindowOut, WindowsQuery,
)
from services.handler import Meta
from services.keys import Principal
from services.runtime import Runtime


REQUEST_ID = web.RequestKey("request_id", str)


class ConfigOut(BaseModel):
    general: GeneralSettings


def ok(data: Any, status: int = 200, position: int | None = None, **top: Any) -> web.Response:
    headers = {"X-Position": str(position)} if position is not None else None
    return web.json_response({"success": True, **top, "data": data}, status=status, headers=headers)


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
    changes = body.model_dump(exclude_unset=True)
    if not changes:
        raise DomainError("VALIDATION_ERROR", "no valid field to update",
                          {"body": "give at least one of " + ", ".join(cat.SETTING_NAMES)})
    if any(v is None for v in changes.values()):
        raise validation(next(k for k, v in changes.items() if v is None), "must not be null")
    catalog, position = await runtime.handler.configure(
        principal.org_id, lambda c: cat.change_settings(c, changes), lambda e: f"org-{principal.org_id}",
        meta(request, principal))
    return ok({"general": catalog.settings.as_dict()}, position=position)


async def list_services(request, runtime: Runtime, principal: Principal) -> web.Response:
    catalog = await runtime.handler.catalog(principal.org_id)
    return ok([vars(s) for s in sorted(catalog.services.values(), key=lambda s: s.name.casefold())])


async def create_service(request, runtime: Runtime, principal: Principal, body: CreateService) -> web.Response:
    service_id = cat.new_id()
    catalog, position = await runtime.handler.configure(
        principal.org_id, lambda c: cat.add_service(c, service_id, body.name, body.duration_minutes),
        lambda e: f"service-{service_id}", meta(request, principal))
    return ok(vars(catalog.services[service_id]), 201, position)


async def list_branches(request, runtime: Runtime, principal: Principal) -> web.Response:
    catalog = await runtime.handler.catalog(principal.org_id)
    return ok([vars(b) for b in sorted(catalog.branches.values(), key=lambda b: b.name.casefold())])


async def create_branch(request, runtime: Runtime, principal: Principal, body: CreateBranch) -> web.Response:
    branch_id = cat.new_id()
    catalog, position = await runtime.handler.configure(
        principal.org_id, lambda c: cat.add_branch(c, branch_id, body.name), lambda e: f"branch-{branch_id}",
        meta(request, principal))
    return ok(vars(catalog.branches[branch_id]), 201, position)


async def list_windows(request, runtime: Runtime, principal: Principal, query: WindowsQuery) -> web.Response:
    catalog = await runtime.handler.catalog(principal.org_id)
    if query.branch_id is not None:
        catalog.resolve_branch(query.branch_id)
    windows = [w.as_dict() for w in sorted(catalog.windows.values(),
                                           key=lambda w: (w.branch_id, w.day_of_week, w.start_time, w.window_id))
               if query.branch_id in (None, w.branch_id)]
    return ok(windows)


async def create_window(request, runtime: Runtime, principal: Principal, body: CreateWindow) -> web.Response:
    window = cat.Window(window_id=cat.new_id(), **body.model_dump())
    catalog, position = await runtime.handler.configure(
        principal.org_id, lambda c: cat.create_window(c, window), lambda e: f"window-{window.window_id}",
        meta(request, principal))
    return ok(catalog.windows[window.window_id].as_dict(), 201, position)


async def update_window(request, runtime: Runtime, principal: Principal, body: UpdateWindow) -> web.Response:
    window_id = request.match_info["window_id"]
    changes = {k: v for k, v in body.model_dump(exclude_unset=True).items() if v is not None}
    if not changes:
        raise DomainError("VALIDATION_ERROR", "no valid field to update",
                          {"body": "give start_time, end_time, max_slots, batch or status"})
    catalog, position = await runtime.handler.configure(
        principal.org_id, lambda c: cat.change_window(c, window_id, changes), lambda e: f"window-{window_id}",
        meta(request, principal))
    return ok(catalog.windows[window_id].as_dict(), position=position)


async def disable_window(request, runtime: Runtime, principal: Principal) -> web.Response:
    window_id = request.match_info["window_id"]
    catalog, position = await runtime.handler.configure(
        principal.org_id, lambda c: cat.disable_window(c, window_id), lambda e: f"window-{window_id}",
        meta(request, principal))
    return ok(catalog.windows[window_id].as_dict(), position=position)


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
    window_id, date = request.match_info["window_id"], request.match_info["date"]
    try:
        dt.date.fromisoformat(date)
    except ValueError:
        raise validation("date", "must be a date YYYY-MM-DD") from None
    outcome = await runtime.handler.adjust_day(principal.org_id, window_id, date, body.status, body.max_slots,
                                               meta(request, principal))
    return ok(outcome.data, position=outcome.position)


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

def _written(outcome) -> dict[str, Any]:
    return {**outcome.data, "position": outcome.position}


async def create_appointment(request, runtime: Runtime, principal: Principal, body: CreateAppointment) -> web.Response:
    outcome = await runtime.handler.create_appointment(principal.org_id, body.model_dump(), meta(request, principal))
    top: dict[str, Any] = {"appointment_id": outcome.data["appointment_id"], "token": outcome.data["token"]}
    if outcome.idempotent:
        top = {"idempotent": True, **top}
    return ok(_written(outcome), outcome.status, outcome.position, **top)


async def get_appointment(request, runtime: Runtime, principal: Principal, query: ReadQuery) -> web.Response:
    appointment_id = request.match_info["appointment_id"]
    await _read_after(runtime, "appointments", query.min_position)
    async with runtime.pool.acquire() as conn:
        record = await queries.appointment(conn, principal.org_id, appointment_id)
    if record is None:
        raise not_found("appointment", appointment_id)
    return ok(record)


async def update_appointment(request, runtime: Runtime, principal: Principal, body: UpdateAppointment) -> web.Response:
    patch = body.model_dump(exclude_unset=True)
    for name, value in patch.items():
        if value is None and name in ("appointment_date", "status"):
            raise validation(name, "must not be null")
    if isinstance(patch.get("follow_up_date"), dt.date):
        patch["follow_up_date"] = patch["follow_up_date"].isoformat()
    outcome = await runtime.handler.update_appointment(principal.org_id, request.match_info["appointment_id"], patch,
                                                       meta(request, principal))
    return ok(_written(outcome), position=outcome.position)


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

