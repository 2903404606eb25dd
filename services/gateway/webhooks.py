"""Webhook subscriptions and their delivery log over HTTP (DESIGN §9). Scope: settings:write."""
from __future__ import annotations

import uuid
from typing import Any

import asyncpg
from aiohttp import web

from domain.errors import not_found
from schemas.http import CreateWebhook, DeliveriesQuery, UpdateWebhook
from services.dispatcher import queue_test_event
from services.gateway.backend import Backend
from services.gateway.handlers import ok
from services.keys import Principal

_DELIVERY = """
SELECT d.delivery_id, d.webhook_id, d.event_id::text, d.event_type, d.status, d.next_attempt_at, d.last_status_code,
       d.last_error, d.created_at, d.delivered_at,
       coalesce((SELECT jsonb_agg(jsonb_build_object('attempt', a.attempt, 'at', a.at, 'status_code', a.status_code,
                                                     'duration_ms', a.duration_ms, 'error', a.error)
                                  ORDER BY a.attempt) FROM webhook_attempts a WHERE a.delivery_id = d.delivery_id),
                '[]') AS attempts
FROM webhook_deliveries d JOIN webhooks w USING (webhook_id)
WHERE w.org_id = $1 AND d.webhook_id = $2"""


def _delivery(row: asyncpg.Record) -> dict[str, Any]:
    out = dict(row)
    for name in ("next_attempt_at", "created_at", "delivered_at"):
        if out[name] is not None:
            out[name] = out[name].isoformat()
    if out["status"] != "pending":
        out["next_attempt_at"] = None
    return out


async def create_webhook(request, backend: Backend, principal: Principal, body: CreateWebhook) -> web.Response:
    created = await backend.webhooks.create(principal.org_id, body.url, body.event_types, body.description)
    return ok(created, 201, webhook_id=created["webhook_id"], secret=created["secret"])


async def list_webhooks(request, backend: Backend, principal: Principal) -> web.Response:
    return ok(await backend.webhooks.list(principal.org_id))


async def get_webhook(request, backend: Backend, principal: Principal) -> web.Response:
    return ok(await backend.webhooks.get(principal.org_id, request.match_info["webhook_id"]))


async def update_webhook(request, backend: Backend, principal: Principal, body: UpdateWebhook) -> web.Response:
    return ok(await backend.webhooks.update(principal.org_id, request.match_info["webhook_id"],
                                            body.model_dump(exclude_unset=True)))


async def delete_webhook(request, backend: Backend, principal: Principal) -> web.Response:
    return ok(await backend.webhooks.delete(principal.org_id, request.match_info["webhook_id"]))


async def rotate_secret(request, backend: Backend, principal: Principal) -> web.Response:
    rotated = await backend.webhooks.rotate(principal.org_id, request.match_info["webhook_id"])
    return ok(rotated, secret=rotated["secret"])


async def send_test(request, backend: Backend, principal: Principal) -> web.Response:
    webhook_id = request.match_info["webhook_id"]
    await backend.webhooks.get(principal.org_id, webhook_id)
    async with backend.pool.acquire() as conn:
        delivery_id = await queue_test_event(conn, principal.org_id, webhook_id, backend.handler.clock())
        row = await conn.fetchrow(_DELIVERY + " AND d.delivery_id = $3", uuid.UUID(principal.org_id), webhook_id,
                                  delivery_id)
    return ok(_delivery(row), 202)


async def list_deliveries(request, backend: Backend, principal: Principal, query: DeliveriesQuery) -> web.Response:
    webhook_id = request.match_info["webhook_id"]
    await backend.webhooks.get(principal.org_id, webhook_id)
    args: list[Any] = [uuid.UUID(principal.org_id), webhook_id]
    sql = _DELIVERY
    if query.status is not None:
        args.append(query.status)
        sql += f" AND d.status = ${len(args)}"
    if query.before is not None:
        args.append(query.before)
        sql += f" AND d.delivery_id < ${len(args)}"
    args.append(query.limit)
    async with backend.pool.acquire() as conn:
        rows = await conn.fetch(sql + f" ORDER BY d.delivery_id DESC LIMIT ${len(args)}", *args)
    return ok([_delivery(r) for r in rows])


async def retry_delivery(request, backend: Backend, principal: Principal) -> web.Response:
    """Deliver again now (a failed delivery, or one delivered that the receiver lost)."""
    webhook_id = request.match_info["webhook_id"]
    raw = request.match_info["delivery_id"]
    delivery_id = int(raw) if raw.isdigit() and len(raw) < 19 else None
    async with backend.pool.acquire() as conn:
        found = delivery_id is not None and await conn.fetchval(
            "UPDATE webhook_deliveries d SET status = 'pending', next_attempt_at = $4 FROM webhooks w"
            " WHERE w.webhook_id = d.webhook_id AND w.org_id = $1 AND d.webhook_id = $2 AND d.delivery_id = $3"
            " RETURNING d.delivery_id", uuid.UUID(principal.org_id), webhook_id, delivery_id,
            backend.handler.clock())
        if not found:
            raise not_found("delivery", raw)
        row = await conn.fetchrow(_DELIVERY + " AND d.delivery_id = $3", uuid.UUID(principal.org_id), webhook_id,
                                  delivery_id)
    return ok(_delivery(row), 202)
