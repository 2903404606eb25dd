"""A statement's time limit on a live server: the server ends a slow statement itself, the caller is told the
database is unavailable, and the connection stays open for the next caller. (A stalled server, which cannot end
anything itself, is in tests/faults/test_postgres_outage.py.)"""
import time

import asyncpg
import pytest

from services.store.pool import DATABASE_UNAVAILABLE, UNANSWERED_AFTER, create_pool


async def test_a_slow_statement_is_ended_by_the_server_and_its_connection_kept(pg_url, schema):
    pool = await create_pool(pg_url, schema, min_size=1, max_size=1, statement_timeout=0.5)
    try:
        async with pool.acquire() as conn:
            backend = await conn.fetchval("SELECT pg_backend_pid()")
            started = time.monotonic()
            with pytest.raises(DATABASE_UNAVAILABLE) as raised:
                async with conn.transaction():
                    await conn.execute("SELECT pg_sleep(5)")
            took = time.monotonic() - started
            assert isinstance(raised.value, asyncpg.QueryCanceledError), raised.value  # the server's own word
            assert took < 0.5 + UNANSWERED_AFTER, took
            assert await conn.fetchval("SELECT pg_backend_pid()") == backend  # the same connection, still usable
        assert await pool.fetchval("SELECT pg_backend_pid()") == backend  # and back in the pool
    finally:
        await pool.close()
