"""The asyncpg event store: multi-stream appends with expected versions, and a gap-safe log reader."""
from __future__ import annotations

import asyncio
import functools
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, NamedTuple, Sequence

import asyncpg
import orjson


# The database is not there (down, restarting, stalled past a timeout, out of connections): the caller answers
# 503 SERVICE_UNAVAILABLE, or a loop backs off and retries. Never a 500.
# (InternalClientError: a pooled connection whose statement timed out as the server died is still busy when
# it is released; the pool terminates it, and the caller is told the database is unavailable.)
DATABASE_UNAVAILABLE = (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
                        asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError, asyncpg.AdminShutdownError,
                        asyncpg.CrashShutdownError, asyncpg.exceptions.InternalClientError)


class ConcurrencyError(Exception):
    """A stream was not at the version the writer expected; nothing was appended."""

    def __init__(self, stream_id: str, expected: int):
        super().__init__(f"stream {stream_id} is not at version {expected}")
        self.stream_id = stream_id
        self.expected = expected


class LogPosition(NamedTuple):
    """A consumer's place in the log: log order is (transaction_id, global_position)."""

    transaction_id: int
    global_position: int


START = LogPosition(0, 0)


@dataclass(frozen=True)
class NewEvent:
    type: str
    data: dict[str, Any]
    event_id: uuid.UUID = field(default_factory=uuid.uuid4)
    schema_version: int = 1
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SideWrite:
    """A write-side row that must commit with an append, in the append's own statement (one round trip).
    `sql` is a data-modifying statement that may refer to the CTEs `claim` (a row when the stream's version
    matched) and `ins` (the inserted events: global_position, …) and must write nothing unless `claim` has a
    row; its parameters are numbered from $1 and cast explicitly."""
    sql: str
    args: tuple[Any, ...]


GUARD = "EXISTS (SELECT 1 FROM claim)"


@dataclass(frozen=True)
class Append:
    stream_id: str
    expected_version: int  # 0: the stream must not exist yet
    events: Sequence[NewEvent]
    org_id: uuid.UUID | None = None
    side_writes: Sequence[SideWrite] = ()
    condition: SideWrite | None = None  # a boolean SQL expression that must also hold, or nothing is appended


@dataclass(frozen=True)
class StoredEvent:
    position: int
    transaction_id: int
    event_id: uuid.UUID
    stream_id: str
    stream_version: int
    type: str
    schema_version: int
    data: dict[str, Any]
    metadata: dict[str, Any]
    org_id: uuid.UUID | None
    recorded_at: datetime

    @property
    def log_position(self) -> LogPosition:
        return LogPosition(self.transaction_id, self.position)


_COLUMNS = ("global_position, transaction_id::text::bigint AS transaction_id, event_id, stream_id, stream_version,"
            " event_type, schema_version, data, metadata, org_id, recorded_at")

_INSERT = """
INSERT INTO events (event_id, stream_id, stream_version, event_type, schema_version, data, metadata, org_id)
SELECT e.event_id, $1, ($2::int + e.ord)::int, e.event_type, e.schema_version, e.data, e.metadata, $4
FROM unnest($5::uuid[], $6::text[], $7::smallint[], $8::jsonb[], $9::jsonb[])
     WITH ORDINALITY AS e(event_id, event_type, schema_version, data, metadata, ord)
WHERE EXISTS (SELECT 1 FROM claim)
ORDER BY e.ord
RETURNING global_position, transaction_id::text::bigint AS transaction_id, stream_version, recorded_at
"""
# One round trip per stream: the compare-and-set on `streams` and the insert in one statement.
_APPEND_NEW = ("WITH claim AS (INSERT INTO streams (stream_id, version, org_id) SELECT $1, $3, $4 WHERE $2 = 0"
               "{condition} ON CONFLICT DO NOTHING RETURNING 1)" + _INSERT)
_APPEND_EXISTING = ("WITH claim AS (UPDATE streams SET version = $3 WHERE stream_id = $1 AND version = $2"
                    "{condition} RETURNING 1)" + _INSERT)

_PARAM = re.compile(r"\$(\d+)")


def _renumbered(sql: str, offset: int) -> str:
    return _PARAM.sub(lambda m: f"${int(m.group(1)) + offset}", sql)


def _params(sql: str) -> int:
    return max((int(n) for n in _PARAM.findall(sql)), default=0)


@functools.lru_cache(maxsize=256)
def _append_sql(new_stream: bool, condition: str | None, side_writes: tuple[str, ...]) -> str:
    """The append statement for this shape, built once: the compare-and-set (with the extra `condition`),
    the insert, and each side write as a CTE after them, their parameters numbered after the append's."""
    offset = 9
    sql = _APPEND_NEW if new_stream else _APPEND_EXISTING
    extra = ""
    if condition is not None:
        extra = f" AND ({_renumbered(condition, offset)})"
        offset += _params(condition)
    sql = sql.replace("{condition}", extra, 1)
    if not side_writes:
        return sql
    ctes = [sql.removesuffix(_INSERT).removeprefix("WITH "), f"ins AS ({_INSERT.strip()})"]
    for n, write in enumerate(side_writes):
        ctes.append(f"s{n} AS ({_renumbered(write, offset)})")
        offset += _params(write)
    return "WITH " + ",\n".join(ctes) + "\nSELECT * FROM ins ORDER BY stream_version"


_READ_LOG = f"""
SELECT {_COLUMNS} FROM events
WHERE (transaction_id, global_position) > ($1::text::xid8, $2::bigint)
  AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY transaction_id, global_position
LIMIT $3
"""


_READ_COMMITTED = _READ_LOG.replace("  AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())\n", "")


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


async def init_connection(conn: asyncpg.Connection) -> None:
    for kind in ("json", "jsonb"):
        await conn.set_type_codec(kind, encoder=_dumps, decoder=orjson.loads, schema="pg_catalog")


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


async def create_pool(url: str, schema: str = "public", min_size: int = 2, max_size: int = 20,
                      connect_timeout: float = 5.0, statement_timeout: float = 10.0,
                      acquire_timeout: float = 5.0) -> asyncpg.Pool:
    """Bounded waits: a connection from the pool within `acquire_timeout`, a new one within `connect_timeout`,
    any statement within `statement_timeout`; past any of them the caller sees TimeoutError (the database is
    unavailable: a 503, or a loop's retry)."""
    pool = BoundedPool(
        url, min_size=min_size, max_size=max_size, max_queries=50_000, max_inactive_connection_lifetime=300.0,
        loop=None, connect=None, setup=None, init=init_connection, reset=_release,
        connection_class=asyncpg.Connection, record_class=asyncpg.Record, timeout=connect_timeout,
        command_timeout=statement_timeout, server_settings={"search_path": schema, "application_name": "slotledger"})
    pool.acquire_timeout = acquire_timeout
    return await pool


def _row_to_event(row: asyncpg.Record) -> StoredEvent:
    return StoredEvent(
        position=row["global_position"], transaction_id=row["transaction_id"], event_id=row["event_id"],
        stream_id=row["stream_id"], stream_version=row["stream_version"], type=row["event_type"],
        schema_version=row["schema_version"], data=row["data"], metadata=row["metadata"], org_id=row["org_id"],
        recorded_at=row["recorded_at"],
    )


class EventStore:
    def __init__(self, pool: asyncpg.Pool, schema: str = "public"):
        self.pool = pool
        self.schema = schema
        self._on_commit: list[Callable[[], None]] = []

    def on_commit(self, listener: Callable[[], None]) -> None:
        self._on_commit.append(listener)

    def announce(self) -> None:
        """Events were committed: wake the log's readers (see LogWaker). Writers call it after their commit."""
        for listener in self._on_commit:
            listener()

    async def append(self, appends: Sequence[Append], conn: asyncpg.Connection | None = None) -> list[StoredEvent]:
        """Append to every stream or to none. Pass `conn` to join the caller's transaction."""
        if conn is None:
            async with self.pool.acquire() as own:
                async with own.transaction():
                    stored = await self.append(appends, own)
                self.announce()
                return stored
        stored: list[StoredEvent] = []
        for append in appends:
            stored.extend(await self._append_one(conn, append))
        return stored

    async def _append_one(self, conn: asyncpg.Connection, append: Append) -> list[StoredEvent]:
        events = list(append.events)
        if not events:
            return []
        args: list[Any] = [
            append.stream_id, append.expected_version, append.expected_version + len(events), append.org_id,
            [e.event_id for e in events], [e.type for e in events], [e.schema_version for e in events],
            [e.data for e in events], [e.metadata for e in events],
        ]
        if append.condition is not None:
            args += append.condition.args
        for write in append.side_writes:
            args += write.args
        sql = _append_sql(append.expected_version == 0, append.condition.sql if append.condition else None,
                          tuple(w.sql for w in append.side_writes))
        rows = await conn.fetch(sql, *args)
        if not rows:
            replayed = await self._already_appended(conn, append.stream_id, events)
            if replayed is None:
                raise ConcurrencyError(append.stream_id, append.expected_version)
            return replayed
        return [
            StoredEvent(position=row["global_position"], transaction_id=row["transaction_id"], event_id=e.event_id,
                        stream_id=append.stream_id, stream_version=row["stream_version"], type=e.type,
                        schema_version=e.schema_version, data=e.data, metadata=e.metadata, org_id=append.org_id,
                        recorded_at=row["recorded_at"])
            for row, e in zip(rows, events)
        ]

    async def _already_appended(self, conn, stream_id: str, events: list[NewEvent]) -> list[StoredEvent] | None:
        """A retried append of the very same events (same ids, same stream) is a no-op."""
        rows = await conn.fetch(
            f"SELECT {_COLUMNS} FROM events WHERE event_id = ANY($1::uuid[]) ORDER BY global_position",
            [e.event_id for e in events])
        if len(rows) == len(events) and all(row["stream_id"] == stream_id for row in rows):
            return [_row_to_event(row) for row in rows]
        return None

    async def read_stream(self, stream_id: str, after_version: int = 0,
                          conn: asyncpg.Connection | None = None) -> list[StoredEvent]:
        sql = (f"SELECT {_COLUMNS} FROM events WHERE stream_id = $1 AND stream_version > $2"
               " ORDER BY stream_version")
        if conn is None:
            async with self.pool.acquire() as conn:
                rows = await conn.fetch(sql, stream_id, after_version)
        else:
            rows = await conn.fetch(sql, stream_id, after_version)
        return [_row_to_event(row) for row in rows]

    async def stream_version(self, stream_id: str) -> int:
        async with self.pool.acquire() as conn:
            return await conn.fetchval("SELECT version FROM streams WHERE stream_id = $1", stream_id) or 0

    async def read_log(self, after: LogPosition, limit: int = 1000, conn: asyncpg.Connection | None = None,
                       gap_safe: bool = True) -> list[StoredEvent]:
        """Events after `after`, in log order. Gap-safe (the default): only those no running transaction can
        still precede. Otherwise every committed event, for a reader that holds off the writers it cares about
        (a rebuild of inline read models locks their tables)."""
        sql = _READ_LOG if gap_safe else _READ_COMMITTED
        if conn is None:
            async with self.pool.acquire() as conn:
                rows = await conn.fetch(sql, str(after.transaction_id), after.global_position, limit)
        else:
            rows = await conn.fetch(sql, str(after.transaction_id), after.global_position, limit)
        return [_row_to_event(row) for row in rows]

    @property
    def channel(self) -> str:
        return f"{self.schema}_events"


async def load_checkpoint(conn: asyncpg.Connection, name: str) -> LogPosition:
    row = await conn.fetchrow(
        "SELECT transaction_id::text::bigint AS tx, global_position FROM checkpoints WHERE name = $1", name)
    return START if row is None else LogPosition(row["tx"], row["global_position"])


async def save_checkpoint(conn: asyncpg.Connection, name: str, position: LogPosition) -> None:
    """Call inside the consumer's transaction, so its writes and its place in the log commit together."""
    await conn.execute(
        "INSERT INTO checkpoints (name, transaction_id, global_position) VALUES ($1, $2::text::xid8, $3)"
        " ON CONFLICT (name) DO UPDATE SET transaction_id = EXCLUDED.transaction_id,"
        " global_position = EXCLUDED.global_position, updated_at = now()",
        name, str(position.transaction_id), position.global_position)


class LogWaker:
    """Wakes log readers. In-process readers are poked as soon as a writer here announces a commit; readers in
    other processes get a NOTIFY, sent at most once per `coalesce` seconds however many commits there were:
    NOTIFY takes a database-wide lock at commit, so a NOTIFY in every writing transaction (a trigger) would
    serialise all commits. Readers also poll, for writers that announce nothing."""

    def __init__(self, store: EventStore, url: str, coalesce: float = 0.002):
        self.store = store
        self.url = url
        self.coalesce = coalesce
        self._subscribers: set[asyncio.Event] = set()
        self._conn: asyncpg.Connection | None = None
        self._pending = asyncio.Event()
        self._token = uuid.uuid4().hex  # our own NOTIFYs come back to us; they are not news
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        await self._connect()
        self.store.on_commit(self._committed)
        self._task = asyncio.create_task(self._notify_others(), name="log-notify")

    def subscribe(self) -> asyncio.Event:
        """Each reader gets its own flag, so one reader's wake-up never hides another's."""
        flag = asyncio.Event()
        self._subscribers.add(flag)
        return flag

    def _committed(self) -> None:
        self.poke()
        self._pending.set()

    def _on_notify(self, conn: object, pid: int, channel: str, payload: str) -> None:
        if payload != self._token:
            self.poke()

    def poke(self) -> None:
        for flag in self._subscribers:
            flag.set()

    async def _notify_others(self) -> None:
        from services.loops import health

        loop = health("log-waker")
        while True:
            await self._pending.wait()
            self._pending.clear()
            try:
                if self._conn is None or self._conn.is_closed():  # the database restarted: listen again
                    await self._connect()
                await self._conn.execute("SELECT pg_notify($1, $2)", self.store.channel, self._token, timeout=5)
                loop.ok()
            except Exception as exc:  # the other processes' readers poll meanwhile
                self._conn = None
                self._pending.set()
                await loop.failed(exc)
            await asyncio.sleep(self.coalesce)

    async def _connect(self) -> None:
        self._conn = await asyncpg.connect(self.url, timeout=5)
        await self._conn.add_listener(self.store.channel, self._on_notify)
        self.poke()  # what was written while we were not listening

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


async def wait_flag(flag: asyncio.Event, timeout: float) -> None:
    # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that arrives as the
    # flag is set, and the reader's task would then never stop.
    try:
        async with asyncio.timeout(timeout):
            await flag.wait()
    except TimeoutError:
        pass
    flag.clear()
