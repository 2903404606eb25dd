"""The asyncpg event store: multi-stream appends with expected versions, and a gap-safe log reader."""
from __future__ import annotations

import functools
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, NamedTuple, Sequence

import asyncpg
import uuid_utils.compat


class ConcurrencyError(Exception):
    """Streams were not at the versions the writer expected; nothing was appended."""

    def __init__(self, stream_ids: Sequence[str]):
        super().__init__(f"not at the expected version: {', '.join(stream_ids)}")
        self.stream_ids = list(stream_ids)
        self.stream_id = self.stream_ids[0] if self.stream_ids else None


class LogPosition(NamedTuple):
    """A consumer's place in the log: log order is (transaction_id, global_position)."""

    transaction_id: int
    global_position: int


START = LogPosition(0, 0)


def new_event_id() -> uuid.UUID:
    """A UUIDv7 (RFC 9562): time first, then 74 random bits. Each event's id enters a unique index; random ids
    (v4) landed on a random page of it every time, time-ordered ones land beside the last (Marten's sequential
    ids, for the same reason). uuid_utils makes one in 1.8 µs, against 3.9 for uuid.uuid4."""
    return uuid_utils.compat.uuid7()


def position_of(row: asyncpg.Record) -> LogPosition:
    """The log position of a row read by replay_log or publish_log."""
    return LogPosition(row["transaction_id"], row["global_position"])


@dataclass(frozen=True)
class NewEvent:
    type: str
    data: dict[str, Any]
    event_id: uuid.UUID = field(default_factory=new_event_id)
    schema_version: int = 1
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SideWrite:
    """A write-side row that must commit with an append, in the append's own statement (one round trip).
    `sql` is a data-modifying statement that may refer to the CTE `ins` (the inserted events: global_position,
    stream_id, stream_version, …) and must write nothing unless `ins` has rows (GUARD); its parameters are
    numbered from $1 and cast explicitly."""
    sql: str
    args: tuple[Any, ...]


GUARD = "EXISTS (SELECT 1 FROM ins)"  # every stream was claimed and the events went in


@dataclass(frozen=True)
class Append:
    stream_id: str
    expected_version: int  # 0: the stream must not exist yet
    events: Sequence[NewEvent]
    org_id: uuid.UUID | None = None


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

# One statement appends to any number of streams: a compare-and-set per stream on `streams` (an update for
# existing streams, an insert for new ones), and the events only if every stream was claimed. $1: the streams
# as JSON rows [stream_id, expected, new version, org_id]; $2: the events as JSON rows [event_id, stream_id,
# stream_version, type, schema_version, data, metadata, org_id]; $3: how many streams. A statement that claimed
# some streams but not all inserts nothing, and either fails (outside a transaction: what it claimed is undone
# with it) or leaves its caller to roll back (see EventStore.append). The streams are found
# through their key (`= ANY(ARRAY(…))`): the plan is cached and generic, and joined to a JSON set estimated at
# 100 rows it would scan the whole table, every patient's stream included, on every append.
_APPEND = """
WITH input AS (SELECT (r->>0)::text AS stream_id, (r->>1)::int AS expected, (r->>2)::int AS version,
                      (r->>3)::uuid AS org_id FROM jsonb_array_elements($1::jsonb) AS r),
claimed AS (UPDATE streams s SET version = i.version FROM input i
            WHERE s.stream_id = ANY(ARRAY(SELECT stream_id FROM input WHERE expected > 0))
              AND s.stream_id = i.stream_id AND i.expected > 0 AND s.version = i.expected{condition}
            RETURNING s.stream_id),
created AS (INSERT INTO streams (stream_id, version, org_id) SELECT stream_id, version, org_id FROM input
            WHERE expected = 0{condition} ON CONFLICT DO NOTHING RETURNING stream_id),
ins AS (INSERT INTO events (event_id, stream_id, stream_version, event_type, schema_version, data, metadata, org_id)
        SELECT (e->>0)::uuid, e->>1, (e->>2)::int, e->>3, (e->>4)::smallint, e->5, e->6, (e->>7)::uuid
        FROM jsonb_array_elements($2::jsonb) WITH ORDINALITY AS t(e, ord)
        WHERE {all_claimed}
        ORDER BY ord
        RETURNING global_position, transaction_id::text::bigint AS transaction_id, stream_id, stream_version,
                  recorded_at)
"""
_FIXED_PARAMS = 3

_PARAM = re.compile(r"\$(\d+)")


def _renumbered(sql: str, offset: int) -> str:
    return _PARAM.sub(lambda m: f"${int(m.group(1)) + offset}", sql)


def _params(sql: str) -> int:
    return max((int(n) for n in _PARAM.findall(sql)), default=0)


_COUNTED = "(SELECT count(*) FROM claimed) + (SELECT count(*) FROM created)"
_ALL_CLAIMED = {False: f"{_COUNTED} = $3::int",
                True: f"(SELECT slotledger_all_claimed({_COUNTED}, $3::int))"}  # fails the statement otherwise
_NOT_ALL_CLAIMED = "slotledger: a stream was not at its expected version"


@functools.lru_cache(maxsize=256)
def _append_sql(condition: str | None, side_writes: tuple[str, ...], fail: bool = False) -> str:
    """The append statement for this shape, built once: the compare-and-sets (with the extra `condition`),
    the insert, and each side write as a CTE after them, their parameters numbered after the append's.
    `fail`: the statement fails unless it claimed every stream (see slotledger_all_claimed)."""
    offset = _FIXED_PARAMS
    extra = ""
    if condition is not None:
        extra = f" AND ({_renumbered(condition, offset)})"
        offset += _params(condition)
    ctes = [_APPEND.strip().replace("{condition}", extra).replace("{all_claimed}", _ALL_CLAIMED[fail])]
    for n, write in enumerate(side_writes):
        ctes.append(f"s{n} AS ({_renumbered(write, offset)})")
        offset += _params(write)
    return ",\n".join(ctes) + "\nSELECT * FROM ins ORDER BY global_position"


def _read_log_sql(columns: str, gap_safe: bool) -> str:
    bound = "  AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())\n" if gap_safe else ""
    return (f"SELECT {columns} FROM events\n"
            "WHERE (transaction_id, global_position) > ($1::text::xid8, $2::bigint)\n"
            # Qualified: the bare names would sort by the output column (the bigint cast), which no index
            # serves, so every read would sort all of the log after its position.
            f"{bound}ORDER BY events.transaction_id, events.global_position\nLIMIT $3")


_READ_LOG = {gap_safe: _read_log_sql(_COLUMNS, gap_safe) for gap_safe in (True, False)}
# A replay (a rebuild) needs only what projectors read: no metadata to decode, no event objects to build.
_REPLAY_COLUMNS = "global_position, transaction_id::text::bigint AS transaction_id, event_type, data, org_id"
_REPLAY_LOG = {gap_safe: _read_log_sql(_REPLAY_COLUMNS, gap_safe) for gap_safe in (True, False)}
# A publisher (the relay) passes each event's data on as PostgreSQL prints it, never parsed, and takes the few
# fields it reads from the data and the metadata picked out here (the appointment: as the events_appointment
# index has it).
_PUBLISH_COLUMNS = ("global_position, transaction_id::text::bigint AS transaction_id, event_id, stream_id,"
                    " stream_version, event_type, schema_version, data::text AS data_json, org_id, recorded_at,"
                    " coalesce(data->>'appointment_id', data->'appointment'->>'appointment_id') AS appointment_id,"
                    " metadata->>'command_id' AS command_id, metadata->>'request_id' AS request_id")
_PUBLISH_LOG = _read_log_sql(_PUBLISH_COLUMNS, gap_safe=True)


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
        """Events were committed: wake the log's readers (services.store.waker). Writers call it after committing."""
        for listener in self._on_commit:
            listener()

    async def append(self, appends: Sequence[Append], conn: asyncpg.Connection | None = None, *,
                     side_writes: Sequence[SideWrite] = (), condition: SideWrite | None = None,
                     order: Sequence[tuple[str, int]] = ()) -> list[StoredEvent]:
        """Append to every stream or to none, in one statement; `side_writes` ride in it (see SideWrite) and
        `condition` must also hold. Pass `conn` to join the caller's transaction. Raises ConcurrencyError if a
        stream is not at its expected version (or `condition` does not hold). The events take their places in
        the log stream by stream, or as `order` lists them: every event once, as (stream id, index among that
        stream's events), so that the log's order across streams is the order they were decided in."""
        appends = [a for a in appends if a.events]
        if not appends:
            return []
        if conn is None:
            async with self.pool.acquire() as own:
                stored = await self._append(own, appends, side_writes, condition, order)
            self.announce()
            return stored
        return await self._append(conn, appends, side_writes, condition, order)

    async def _append(self, conn: asyncpg.Connection, appends: list[Append], side_writes: Sequence[SideWrite],
                      condition: SideWrite | None, order: Sequence[tuple[str, int]] = ()) -> list[StoredEvent]:
        streams = [(a.stream_id, a.expected_version, a.expected_version + len(a.events), a.org_id) for a in appends]
        if order:
            by_stream = {a.stream_id: a for a in appends}
            placed = [(by_stream[stream], index) for stream, index in order]
            if sorted((a.stream_id, i) for a, i in placed) != sorted((a.stream_id, i) for a in appends
                                                                    for i in range(len(a.events))):
                raise ValueError("an append's order must list each of its events once")
        else:
            placed = [(a, i) for a in appends for i in range(len(a.events))]
        events = [(e.event_id, a.stream_id, a.expected_version + i + 1, e.type, e.schema_version, e.data, e.metadata,
                   a.org_id) for a, i in placed for e in (a.events[i],)]
        args: list[Any] = [streams, events, len(streams)]
        if condition is not None:
            args += condition.args
        for write in side_writes:
            args += write.args
        # Alone, a statement that claimed only some streams must fail, so that what it claimed is undone; in
        # the caller's transaction it inserts nothing, and the caller rolls back (the checks below still run).
        fail = len(appends) > 1 and not conn.is_in_transaction()
        sql = _append_sql(condition.sql if condition else None, tuple(w.sql for w in side_writes), fail)
        try:
            rows = await conn.fetch(sql, *args)
        except asyncpg.SerializationError as exc:
            if _NOT_ALL_CLAIMED not in str(exc):
                raise
            rows = []
        if not rows:
            replayed = await self._already_appended(conn, appends)
            if replayed is None:
                raise ConcurrencyError(await self._unclaimed(conn, streams))
            return replayed
        return [
            StoredEvent(position=row["global_position"], transaction_id=row["transaction_id"], event_id=e[0],
                        stream_id=e[1], stream_version=row["stream_version"], type=e[3], schema_version=e[4],
                        data=e[5], metadata=e[6], org_id=e[7], recorded_at=row["recorded_at"])
            for row, e in zip(rows, events)
        ]

    @staticmethod
    async def _unclaimed(conn: asyncpg.Connection, streams: list[tuple]) -> list[str]:
        """The streams a failed append could not claim: not at the version it expected (in the caller's
        transaction, those it claimed show its new version until rolled back); if `condition` failed, every
        stream is named."""
        now = dict(await conn.fetch("SELECT stream_id, version FROM streams WHERE stream_id = ANY($1::text[])",
                                    [s[0] for s in streams]))
        moved = [stream for stream, expected, version, _ in streams if now.get(stream, 0) not in (expected, version)]
        return moved or [s[0] for s in streams]

    async def _already_appended(self, conn, appends: list[Append]) -> list[StoredEvent] | None:
        """A retried append of the very same events (same ids, same streams) is a no-op."""
        where = {e.event_id: a.stream_id for a in appends for e in a.events}
        rows = await conn.fetch(
            f"SELECT {_COLUMNS} FROM events WHERE event_id = ANY($1::uuid[]) ORDER BY global_position", list(where))
        if len(rows) == len(where) and all(row["stream_id"] == where[row["event_id"]] for row in rows):
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
        sql = _READ_LOG[gap_safe]
        if conn is None:
            async with self.pool.acquire() as conn:
                rows = await conn.fetch(sql, str(after.transaction_id), after.global_position, limit)
        else:
            rows = await conn.fetch(sql, str(after.transaction_id), after.global_position, limit)
        return [_row_to_event(row) for row in rows]

    async def replay_log(self, after: LogPosition, limit: int, conn: asyncpg.Connection,
                         gap_safe: bool = True) -> list[asyncpg.Record]:
        """As read_log, but only each event's global_position, transaction_id, event_type, data and org_id,
        as rows: what a replay needs, at a fraction of the decoding."""
        return await conn.fetch(_REPLAY_LOG[gap_safe], str(after.transaction_id), after.global_position, limit)

    async def publish_log(self, after: LogPosition, limit: int, conn: asyncpg.Connection) -> list[asyncpg.Record]:
        """As read_log (gap-safe), but as rows holding what a publisher sends: the data as JSON text
        (`data_json`), and its `appointment_id`, `command_id` and `request_id`."""
        return await conn.fetch(_PUBLISH_LOG, str(after.transaction_id), after.global_position, limit)

    @property
    def channel(self) -> str:
        return f"{self.schema}_events"


async def load_checkpoint(conn: asyncpg.Connection, name: str) -> LogPosition:
    row = await conn.fetchrow(
        "SELECT transaction_id::text::bigint AS tx, global_position FROM checkpoints WHERE name = $1", name)
    return START if row is None else LogPosition(row["tx"], row["global_position"])


async def save_checkpoint(conn: asyncpg.Connection, name: str, position: LogPosition,
                          timeout: float | None = None) -> None:
    """Call inside the consumer's transaction, so its writes and its place in the log commit together.
    `timeout`: the client's limit, when the transaction runs under another than the pool's."""
    await conn.execute(
        "INSERT INTO checkpoints (name, transaction_id, global_position) VALUES ($1, $2::text::xid8, $3)"
        " ON CONFLICT (name) DO UPDATE SET transaction_id = EXCLUDED.transaction_id,"
        " global_position = EXCLUDED.global_position, updated_at = now()",
        name, str(position.transaction_id), position.global_position, timeout=timeout)
