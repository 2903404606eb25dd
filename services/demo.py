"""Demo data for `slotledger up --demo`: a clinic with two services, one branch, Morning and Evening windows
every day, and an API key with every scope."""
from __future__ import annotations

from domain import catalog as cat
from domain.timerules import WEEKDAYS
from services.outcome import Meta
from services.keys import SCOPES, create_key

DEMO_NAME = "Demo Clinic"


async def seed_demo(runtime) -> dict:
    handler = runtime.handler
    async with runtime.pool.acquire() as conn:
        org_id = await conn.fetchval("SELECT org_id::text FROM orgs WHERE name = $1 ORDER BY created_at LIMIT 1",
                                     DEMO_NAME)
    meta = Meta(actor="demo")
    if org_id is None:
        org_id = (await handler.create_org(DEMO_NAME, "Asia/Kolkata", meta)).org_id
        checkup, follow_up, branch_id = cat.new_id(), cat.new_id(), cat.new_id()
        await handler.configure(org_id, f"service-{checkup}",
                                lambda c: cat.add_service(c, checkup, "General Checkup", 30), meta)
        await handler.configure(org_id, f"service-{follow_up}",
                                lambda c: cat.add_service(c, follow_up, "Follow-up Visit", 15), meta)
        await handler.configure(org_id, f"branch-{branch_id}", lambda c: cat.add_branch(c, branch_id, "Main Branch"),
                                meta)
        for day in WEEKDAYS:
            for session, start, end, batch in (("Morning", "09:00", "12:00", "MA"),
                                               ("Evening", "17:00", "20:00", "EA")):
                window = cat.Window(cat.new_id(), branch_id, day, session, start, end, 20, None, batch)
                await handler.configure(org_id, f"window-{window.window_id}",
                                        lambda c, w=window: cat.create_window(c, w), meta)
    async with runtime.pool.acquire() as conn:
        key = await create_key(conn, org_id, list(SCOPES), "demo")
    catalog = await handler.catalog(org_id)
    return {"org_id": org_id, "api_key": key, "scopes": list(SCOPES), "timezone": catalog.settings.timezone,
            "services": {s.name: s.service_id for s in catalog.services.values()},
            "branch_id": next(iter(catalog.branches))}
