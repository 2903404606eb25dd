"""A rebuild's statements are bounded by the maintenance limit, not a request's: an index build over years of
history, or a TRUNCATE waiting for a long read, may take longer than any request may."""
import asyncio
import time

import asyncpg
import pytest

from services.handler import CommandHandler
from services.outcome import Meta
from services.projector import rebuild
from services.store.eventstore import EventStore
from services.store.pool import DATABASE_UNAVAILABLE, create_pool
from tests.builders import create_body
from tests.integration.test_command_handler import at, clinic

REQUEST_LIMIT = 0.3
HELD = 1.5


async def _hold_a_read_of_the_appointments(pg_url: str, schema: str, seconds: float) -> asyncio.Task:
    """A reader in the middle of a long transaction over rm_appointments: a TRUNCATE waits for it."""
    reader = await asyncpg.connect(pg_url, server_settings={"search_path": schema})
    transaction = reader.transaction()
    await transaction.start()
    await reader.execute("LOCK TABLE rm_appointments IN ACCESS SHARE MODE")

    async def release() -> None:
        try:
            await asyncio.sleep(seconds)
            await transaction.rollback()
        finally:
            await reader.close()

    return asyncio.create_task(release())


async def test_a_rebuild_outlasts_the_request_limit_but_not_its_own(pg_url, schema):
    pool = await create_pool(pg_url, schema, min_size=1, max_size=4, statement_timeout=REQUEST_LIMIT)
    store = EventStore(pool, schema)
    try:
        handler = CommandHandler(pool, store)
        org_id = await clinic(handler)
        booked = (await handler.create_appointment(org_id, create_body(at("09:00")), Meta())).data

        # Under the maintenance limit: it waits out the reader, far past a request's limit, and completes.
        held = await _hold_a_read_of_the_appointments(pg_url, schema, HELD)
        started = time.monotonic()
        report = await rebuild(pool, store)
        took = time.monotonic() - started
        await held
        assert took >= HELD - 0.1, took
        assert report["appointments"]["events"] > 0
        assert report["appointments"]["rows"]["rm_appointments"] == 1

        # A rebuild still has a limit of its own: a shorter one ends the wait, and the rebuild rolls back.
        held = await _hold_a_read_of_the_appointments(pg_url, schema, HELD)
        started = time.monotonic()
        with pytest.raises(DATABASE_UNAVAILABLE) as raised:
            await rebuild(pool, store, statement_timeout=REQUEST_LIMIT)
        took = time.monotonic() - started
        await held
        assert isinstance(raised.value, asyncpg.QueryCanceledError), raised.value
        assert took < HELD - 0.5, took
        async with pool.acquire() as conn:  # nothing half-done: the read model is as it was
            rows = await conn.fetch("SELECT appointment_id FROM rm_appointments")
        assert [r["appointment_id"] for r in rows] == [booked["appointment_id"]]

        # The request limit still holds for everything else on the pool's connections afterwards.
        with pytest.raises(asyncpg.QueryCanceledError):
            await pool.execute("SELECT pg_sleep(2)")
    finally:
        await pool.close()
