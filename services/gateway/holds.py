"""Holds and the waitlist over HTTP (DESIGN §8)."""
from __future__ import annotations

from typing import Any

from aiohttp import web

from domain.errors import not_found
from projections import queries
from schemas.http import ConfirmHold, CreateHold, JoinWaitlist, ReadQuery, WaitlistQuery
from services import commands
from services.gateway.backend import Backend
from services.gateway.handlers import answer, meta, ok
from services.keys import Principal


async def create_hold(request, backend: Backend, principal: Principal, body: CreateHold) -> web.Response:
    outcome = await commands.place_hold(backend.handler, principal.org_id, body, meta(request, principal))
    return answer(outcome, hold_id=outcome.data["hold_id"], expires_at=outcome.data["expires_at"])


async def confirm_hold(request, backend: Backend, principal: Principal, body: ConfirmHold) -> web.Response:
    outcome = await commands.confirm_hold(backend.handler, principal.org_id, request.match_info["hold_id"], body,
                                          meta(request, principal))
    top: dict[str, Any] = {"appointment_id": outcome.data["appointment_id"], "token": outcome.data["token"]}
    if outcome.idempotent:
        top = {"idempotent": True, **top}
    return answer(outcome, **top)


async def release_hold(request, backend: Backend, principal: Principal) -> web.Response:
    return answer(await backend.handler.release_hold(principal.org_id, request.match_info["hold_id"],
                                                     meta(request, principal)))


async def get_hold(request, backend: Backend, principal: Principal, query: ReadQuery) -> web.Response:
    hold_id = request.match_info["hold_id"]
    async with backend.pool.acquire() as conn:
        found = await queries.hold(conn, principal.org_id, hold_id, backend.handler.clock())
    if found is None:
        raise not_found("hold", hold_id)
    return ok(found)


async def join_waitlist(request, backend: Backend, principal: Principal, body: JoinWaitlist) -> web.Response:
    outcome = await commands.join_waitlist(backend.handler, principal.org_id, body, meta(request, principal))
    top = {"idempotent": True} if outcome.idempotent else {}
    return answer(outcome, waitlist_id=outcome.data["waitlist_id"], position=outcome.data["position"], **top)


async def list_waitlist(request, backend: Backend, principal: Principal, query: WaitlistQuery) -> web.Response:
    catalog = await backend.handler.catalog(principal.org_id)
    if query.branch_id is not None:
        catalog.resolve_branch(query.branch_id)
    service_id = catalog.resolve_service(query.appointment_type).service_id if query.appointment_type else None
    async with backend.pool.acquire() as conn:
        entries = await queries.waitlist(conn, principal.org_id, query.date, query.branch_id, service_id,
                                         query.status)
    return ok(entries)


async def get_entry(request, backend: Backend, principal: Principal, query: ReadQuery) -> web.Response:
    waitlist_id = request.match_info["waitlist_id"]
    async with backend.pool.acquire() as conn:
        found = await queries.waitlist_entry(conn, principal.org_id, waitlist_id)
    if found is None:
        raise not_found("waitlist entry", waitlist_id)
    return ok(found)


async def leave_waitlist(request, backend: Backend, principal: Principal) -> web.Response:
    return answer(await backend.handler.leave_waitlist(principal.org_id, request.match_info["waitlist_id"],
                                                       meta(request, principal)))
