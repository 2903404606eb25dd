"""The connection pool: bounded waits everywhere, JSON codecs, and what counts as "the database is not there"."""
from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import orjson


# The database is not there (down, restarting, stalled past a timeout, out of connections): the caller answers
# 503 SERVICE_UNAVAILABLE, or a loop backs off and retries. Never a 500.
# (InternalClientError: a pooled connection whose statement timed out as the server died is still busy when
# it is released; the pool terminates it, and the caller is told the database is unavailable.)
# (QueryCanceledError: the server ended a statement at its own statement_timeout.)
DATABASE_UNAVAILABLE = (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
                        asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError, asyncpg.AdminShutdownError,
                        asyncpg.CrashShutdownError, asyncpg.exceptions.InternalClientError, asyncpg.QueryCanceledError)

# How much longer than the server's own statement_timeout the client waits before it decides the server is not
# answering at all (stalled, or gone without a word).
UNANSWERED_AFTER = 0.5


def _server_limit(seconds: float) -> str:
    return str(round(seconds * 1000))  # statement_timeout's unit


def _client_limit(seconds: float) -> float:
    return seconds + UNANSWERED_AFTER


async def limit_statements(conn: asyncpg.Connection, seconds: float) -> float:
    """Within the caller's transaction, a statement limit other than the pool's (a maintenance step's): the
    server's, set here, and the client's, returned for each of the transaction's calls to pass as `timeout`."""
    await conn.execute(f"SET LOCAL statement_timeout = {_server_limit(seconds)}")
    return _client_limit(seconds)


# JSON in binary format: no str round trip, and binary COPY (a rebuild's loads) can carry jsonb columns.
# jsonb's binary form is a version byte (1) and the text; json's is the text alone.
def _json_out(value: Any) -> bytes:
    return orjson.dumps(value, default=_uuid)


def _jsonb_out(value: Any) -> bytes:
    return b"\x01" + orjson.dumps(value, default=_uuid)


def _uuid(value: Any) -> str:
    """asyncpg's own UUID type (ids read back from the database), which orjson does not know. Anything else
    unknown is an error, never its str(): a record object passed where its as_dict() belongs must fail loudly."""
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def _jsonb_in(data: bytes) -> Any:
    return orjson.loads(memoryview(data)[1:])


async def init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("json", encoder=_json_out, decoder=orjson.loads, schema="pg_catalog", format="binary")
    await conn.set_type_codec("jsonb", encoder=_jsonb_out, decoder=_jsonb_in, schema="pg_catalog", format="binary")


async def _release(conn: asyncpg.Connection) -> None:
    """Instead of asyncpg's reset query on every release (a round trip each time): our pooled connections never
    LISTEN, SET or hold session locks; only an unfinished transaction would leak, and that is rolled back."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


class BoundedPool(asyncpg.Pool):
    """asyncpg's pool, with a bound on waiting for a connection: when the database stalls, every connection is
    busy and callers would otherwise queue for as long as the stall lasts."""
    acquire_timeout: float = 5.0

    def acquire(self, *, timeout: float | None = None):
        return super().acquire(timeout=self.acquire_timeout if timeout is None else timeout)


class Connection(asyncpg.Connection):
    """A statement ends one of two ways. A live server ends a slow one itself, at its statement_timeout, and
    answers QueryCanceledError on a connection that stays usable. A statement still unanswered a moment later
    means the server is not answering at all (stalled, or gone without a word). asyncpg would then send a
    CancelRequest over a second connection to that same server and make the next use of this one (the
    transaction's ROLLBACK, the pool's release) wait for it: another full timeout, with every caller queued
    behind this connection waiting too. Instead the connection is dropped at once; a server that comes back
    rolls back whatever it was doing when it notices its client is gone."""

    def _cancel_current_command(self, waiter, cancel_waiter=None):
        # Not now: the protocol is still inside its timeout callback, about to fail the statement's waiter.
        self._loop.call_soon(self.terminate)


async def create_pool(url: str, schema: str = "public", min_size: int = 2, max_size: int = 20,
                      connect_timeout: float = 5.0, statement_timeout: float = 10.0,
                      acquire_timeout: float = 5.0) -> asyncpg.Pool:
    """Bounded waits: a connection from the pool within `acquire_timeout`, a new one within `connect_timeout`,
    any statement within `statement_timeout` (ended by the server, or given up on by the client just after);
    past any of them the caller sees one of DATABASE_UNAVAILABLE (a 503, or a loop's retry)."""
    pool = BoundedPool(
        url, min_size=min_size, max_size=max_size, max_queries=50_000, max_inactive_connection_lifetime=300.0,
        loop=None, connect=None, setup=None, init=init_connection, reset=_release,
        connection_class=Connection, record_class=asyncpg.Record, timeout=connect_timeout,
        command_timeout=_client_limit(statement_timeout),
        server_settings={"search_path": schema, "application_name": "slotledger",
                         "statement_timeout": _server_limit(statement_timeout)})
    pool.acquire_timeout = acquire_timeout
    return await pool
