"""Route handlers: translate HTTP to commands and queries, and results to the documented shapes."""
from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel

from domain.errors import not_found, validation
from projections import queries
from projections.reconcile import reconcile
from schemas.http import (  # noqa: F401  (re-exported for the route table)
    Appointment, AvailabilityQuery, BranchOut, CreateAppointment, CreateBranch, CreateService, CreateWindow,
    GeneralSettings, ReadQuery, Regenerate, SearchQuery, ServiceOut, SettingsPatch, TrackingQuery, TrackingRecord,
    UpdateAppointment, UpdateWindow, UpdateWindowDay, WindowOut, WindowsQuery,
)
from services import commands
from services.outcome import Meta, Outcome
from services.keys import Principal
from services.gateway.backend import Backend


def json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


REQUEST_ID = web.RequestKey("request_id", str)


class ConfigOut(BaseModel):
    general: GeneralSettings


def ok(data: Any, status: int = 200, log_position: int | None = None, **top: Any) -> web.Response:
    """`log_position`: the write's position in the log, as the X-Position header."""
    headers = {"X-Position": str(log_position)} if log_position is not None else None
    return web.json_response({"success": True, **top, "data": data}, status=status, headers=headers,
                             dumps=json_text)


def answer(outcome: Outcome, **top: Any) -> web.Response:
    return ok(outcome.data, outcome.status, outcome.position, **top)


def meta(request: web.Request, principal: Principal) -> Meta:
    return Meta(request_id=request[REQUEST_ID], actor=principal.key_id)


# -- configuration -------------------------------------------------------------------------------------

async def get_config(request, backend: Backend, principal: Principal) -> web.Response:
    catalog = await backend.handler.catalog(principal.org_id)
    return ok({"general": catalog.settings.as_dict()})


async def patch_config(request, backend: Backend, principal: Principal, body: SettingsPatch) -> web.Response:
    return answer(await commands.change_settings(backend.handler, principal.org_id, body, meta(request, principal)))


async def list_services(request, backend: Backend, principal: Principal) -> web.Response:
    catalog = await backend.handler.catalog(principal.org_id)
    return ok([vars(s) for s in sorted(catalog.services.values(), key=lambda s: s.name.casefold())])


async def create_service(request, backend: Backend, principal: Principal, body: CreateService) -> web.Response:
    return answer(await commands.create_service(backend.handler, principal.org_id, body, meta(request, principal)))


async def list_branches(request, backend: Backend, principal: Principal) -> web.Response:
    catalog = await backend.handler.catalog(principal.org_id)
    return ok([vars(b) for b in sorted(catalog.branches.values(), key=lambda b: b.name.casefold())])


async def create_branch(request, backend: Backend, principal: Principal, body: CreateBranch) -> web.Response:
    return answer(await commands.create_branch(backend.handler, principal.org_id, body, meta(request, principal)))


async def list_windows(request, backend: Backend, principal: Principal, query: WindowsQuery) -> web.Response:
    catalog = await backend.handler.catalog(principal.org_id)
    if query.branch_id is not None:
        catalog.resolve_branch(query.branch_id)
    windows = [w.as_dict() for w in sorted(catalog.windows.values(),
                                           key=lambda w: (w.branch_id, w.day_of_week, w.start_time, w.window_id))
               if query.branch_id in (None, w.branch_id)]
    return ok(windows)


async def create_window(request, backend: Backend, principal: Principal, body: CreateWindow) -> web.Response:
    return answer(await commands.create_window(backend.handler, principal.org_id, body, meta(request, principal)))


async def update_window(request, backend: Backend, principal: Principal, body: UpdateWindow) -> web.Response:
    return answer(await commands.update_window(backend.handler, principal.org_id, request.match_info["window_id"],
                                               body, meta(request, principal)))


async def disable_window(request, backend: Backend, principal: Principal) -> web.Response:
    return answer(await commands.disable_window(backend.handler, principal.org_id, request.match_info["window_id"],
                                                meta(request, principal)))


# -- availability and schedule tracking ----------------------------------------------------------------

async def availability(request, backend: Backend, principal: Principal, query: AvailabilityQuery) -> web.Response:
    catalog = await backend.handler.catalog(principal.org_id)
    if query.branch_id is not None:
        catalog.resolve_branch(query.branch_id)
    service_id = catalog.resolve_service(query.appointment_type).service_id if query.appointment_type else None
    async with backend.pool.acquire() as conn:
        rows = await queries.availability(conn, catalog, query.date, query.branch_id, service_id, query.session,
                                          backend.handler.clock())
    return ok(rows)


def _date_range(date_from: dt.date, date_to: dt.date) -> None:
    if date_to < date_from:
        raise validation("date_to", "must not be before date_from")
    if (date_to - date_from).days + 1 > 92:
        raise validation("date_to", "the range may span at most 92 days")


async def schedule_tracking(request, backend: Backend, principal: Principal, query: TrackingQuery) -> web.Response:
    _date_range(query.date_from, query.date_to)
    catalog = await backend.handler.catalog(principal.org_id)
    if query.branch_id is not None:
        catalog.resolve_branch(query.branch_id)
    if query.window_id is not None:
        catalog.window(query.window_id)
    async with backend.pool.acquire() as conn:
        rows = await queries.schedule_tracking(conn, catalog, query.date_from, query.date_to, query.branch_id,
                                               query.window_id)
    return ok(rows)


async def update_window_day(request, backend: Backend, principal: Principal, body: UpdateWindowDay) -> web.Response:
    return answer(await commands.update_window_day(backend.handler, principal.org_id, request.match_info["window_id"],
                                                   request.match_info["date"], body, meta(request, principal)))


async def regenerate(request, backend: Backend, principal: Principal, body: Regenerate) -> web.Response:
    """Recount every window-day in the range from the log itself and correct the read model where it differs."""
    _date_range(body.date_from, body.date_to)
    catalog = await backend.handler.catalog(principal.org_id)
    async with backend.pool.acquire() as conn:
        checked, corrections = await reconcile(conn, principal.org_id, body.date_from, body.date_to)
        records = await queries.schedule_tracking(conn, catalog, body.date_from, body.date_to)
    return ok({"date_from": body.date_from.isoformat(), "date_to": body.date_to.isoformat(),
               "records": len(records), "window_days_checked": checked, "corrections": corrections})


# -- appointments --------------------------------------------------------------------------------------

async def create_appointment(request, backend: Backend, principal: Principal, body: CreateAppointment) -> web.Response:
    outcome = await commands.create_appointment(backend.handler, principal.org_id, body, meta(request, principal))
    top: dict[str, Any] = {"appointment_id": outcome.data["appointment_id"], "token": outcome.data["token"]}
    if outcome.idempotent:
        top = {"idempotent": True, **top}
    return answer(outcome, **top)


async def get_appointment(request, backend: Backend, principal: Principal, query: ReadQuery) -> web.Response:
    appointment_id = request.match_info["appointment_id"]
    async with backend.pool.acquire() as conn:
        record = await queries.appointment(conn, principal.org_id, appointment_id)
    if record is None:
        raise not_found("appointment", appointment_id)
    return ok(record)


async def update_appointment(request, backend: Backend, principal: Principal, body: UpdateAppointment) -> web.Response:
    return answer(await commands.update_appointment(backend.handler, principal.org_id,
                                                    request.match_info["appointment_id"], body,
                                                    meta(request, principal)))


async def search_appointments(request, backend: Backend, principal: Principal, query: SearchQuery) -> web.Response:
    filters = query.model_dump(exclude={"limit", "cursor", "min_position"})
    if query.appointment_type or query.parent_phone:
        catalog = await backend.handler.catalog(principal.org_id)
        filters["phone_region"] = catalog.settings.phone_region
        if query.appointment_type:
            filters["appointment_type"] = catalog.resolve_service(query.appointment_type).service_id
    async with backend.pool.acquire() as conn:
        items, next_cursor = await queries.search(conn, principal.org_id, filters, query.limit, query.cursor)
    return ok(items, next_cursor=next_cursor)


async def appointment_history(request, backend: Backend, principal: Principal) -> web.Response:
    appointment_id = request.match_info["appointment_id"]
    async with backend.pool.acquire() as conn:
        await backend.handler.locate(principal.org_id, appointment_id, conn)
        events = await queries.history(conn, principal.org_id, appointment_id)
    return ok(events)

