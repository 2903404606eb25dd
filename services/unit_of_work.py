"""The unit of work: the one place a decision becomes durable.

It owns what deciding needs besides the domain: per-stream locks (so one process never races itself), the
caches of org catalogs and window-days, and `commit()`. A commit appends the events with their expected
versions and writes, in the same transaction, the write-side rows and the inline read models derived from
them (projections/) and the Kafka results; in one statement when no table is written twice. A lost race (a
stream moved on, the configuration changed, a unique or exclusion constraint) evicts what was cached and
raises Conflict: the caller decides again, from fresh state.
"""
from __future__ import annotations

import asyncio
import contextlib
import operator
import random
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

import asyncpg

from domain import catalog as cat
from domain import events as ev
from domain import patients
from domain import windowday as wd
from domain.appointment import Appointment
from domain.errors import DomainError, not_found
from projections import write_side
from projections.base import Write, compile_writes, recordset
from projections.registry import INLINE
from services import command_results
from services.command_results import CommandAlreadyApplied, PendingResult
from services.outcome import Meta
from services.store.eventstore import (GUARD, Append, ConcurrencyError, EventStore, NewEvent, SideWrite, StoredEvent,
                                      new_event_id)
from services.snapshots import SNAPSHOT_AFTER, Snapshots
from services.store.pool import DATABASE_UNAVAILABLE


class Conflict(Exception):
    """The decision was made on state that moved on; nothing was written. Decide again."""


@dataclass
class Change:
    """Events for one stream, appended only if the stream is still at `expected`; `metas` one per event."""
    stream_id: str
    expected: int
    events: list[ev.Event]
    metas: list[Meta]


@dataclass
class Work:
    """Everything one commit writes. `touched` holds each changed appointment before (None: new) and after;
    `config_version` is the catalog version the decision used (the commit holds only while it is current)."""
    org_id: str
    catalog: cat.Catalog
    config_version: int | None
    changes: list[Change]
    touched: Sequence[tuple[Appointment | None, Appointment]] = ()
    results: Sequence[tuple[str, PendingResult]] = ()  # (stream id, result)
    writes: Sequence[Write] = ()  # write-side rows not about appointments (the orgs row)
    # The events in the order they were decided, as (stream id, index in that stream's change), when several
    # decisions span streams: one appointment moved A → B → A puts its last arrival in A's change, before the
    # move to B, and the log (so every rebuild and every reader of the events topic) and the read models must
    # see the moves as decided. Without it, change by change.
    order: Sequence[tuple[str, int]] = ()

    def decided(self) -> list[ev.Event]:
        if not self.order:
            return [event for change in self.changes for event in change.events]
        by_stream = {change.stream_id: change.events for change in self.changes}
        return [by_stream[stream][index] for stream, index in self.order]


# A stream appended to only if it does not exist yet: its first event, and the stream's row. Either may already
# be there (another booking of the patient, in this statement's snapshot or committing concurrently): then
# neither is written, and nothing else of the commit depends on it.
_FIRST_EVENT = ("INSERT INTO events (event_id, stream_id, stream_version, event_type, schema_version, data, metadata,"
                " org_id) SELECT id, stream, 1, type, version, data, metadata, org FROM "
                + recordset("id uuid, stream text, type text, version smallint, data jsonb, metadata jsonb, org uuid")
                + " WHERE {guard} ON CONFLICT (stream_id, stream_version) DO NOTHING")
_FIRST_STREAM = ("INSERT INTO streams (stream_id, version, org_id) SELECT s, 1, o FROM " + recordset("s text, o uuid")
                 + " WHERE {guard} ON CONFLICT DO NOTHING")


def _first_sightings(org: uuid.UUID, work: "Work") -> list[Write]:
    """Patients booked in this commit are registered on their own streams if the log has not seen them: the
    registration's events and their read-model rows, written if absent, in the same statement."""
    out: list[Write] = []
    for change in work.changes:
        for event, meta in zip(change.events, change.metas):
            if not isinstance(event, ev.AppointmentBooked):
                continue
            registered = patients.registration(event)
            stream = patients.stream_of(registered.patient_id)
            out.append(Write("events", _FIRST_EVENT, (new_event_id(), stream, registered.type, registered.version,
                                                      registered.data(), meta.as_dict(), org), (stream,)))
            out.append(Write("streams", _FIRST_STREAM, (stream, org), (stream,)))
            out += [w for p in INLINE for w in p.writes(registered, org)]
    return out


_CONFIG_CURRENT = "EXISTS (SELECT 1 FROM orgs WHERE org_id = $1::uuid AND config_version = $2::bigint)"


class StreamLock:
    """This process's lock on a stream. A holder that leaves because the database did not answer (stalled,
    down) marks it: whoever was already waiting is told the database is unavailable at once, rather than
    sending its own statement to the same server and waiting out a second timeout behind the first."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._failures = 0  # holders that left for want of a database

    async def __aenter__(self) -> None:
        failures = self._failures
        await self._lock.acquire()
        if self._failures != failures:
            self._lock.release()
            raise TimeoutError("the database did not answer the command ahead of this one")

    @property
    def held(self) -> bool:
        return self._lock.locked()

    async def __aexit__(self, kind, exc, tb) -> None:
        if isinstance(exc, DATABASE_UNAVAILABLE):
            self._failures += 1
        self._lock.release()


# Each stream's missing events as one range of its (stream, version) key, read by a lateral subquery that
# OFFSET 0 keeps from being flattened into a join: a range scan of that index per stream whatever the statistics
# say. A join on every (stream, version) pair was planned as a hash join over the whole log once a process
# loaded a busy calendar's days cold (~100k pairs: 1.9 s a query in the full bench, 115 µs per event), and its
# ORDER BY sorted every event's data, spilling to disk; the order is restored in Python instead.
_EVENTS_AFTER = (
    "SELECT e.stream_id, e.stream_version, e.event_type, e.data"
    " FROM unnest($1::text[], $2::int[], $3::int[]) AS k(stream_id, after, upto)"
    " CROSS JOIN LATERAL (SELECT stream_id, stream_version, event_type, data FROM events"
    " WHERE stream_id = k.stream_id AND stream_version > k.after AND stream_version <= k.upto OFFSET 0) AS e")
_STREAM_ORDER = operator.itemgetter(0, 1)
# An org's configuration: its configuration streams' events, each stream read by its own key as above.
_CONFIGURATION = (
    "SELECT e.stream_id, e.stream_version, e.event_type, e.data, e.global_position FROM config_streams c"
    " CROSS JOIN LATERAL (SELECT stream_id, stream_version, event_type, data, global_position FROM events"
    " WHERE stream_id = c.stream_id OFFSET 0) AS e WHERE c.org_id = $1")
_LOG_ORDER = operator.itemgetter(4)

@dataclass
class UnitOfWork:
    pool: asyncpg.Pool
    store: EventStore
    retries: int = 8
    cache_size: int = 20_000
    _catalogs: dict[str, tuple[int, cat.Catalog, dict[str, int]]] = field(default_factory=dict)
    _days: OrderedDict[str, wd.WindowDay] = field(default_factory=OrderedDict)
    _locks: dict[str, StreamLock] = field(default_factory=dict)
    _snapshotted: dict[str, int] = field(default_factory=dict)  # cached day → the version its snapshot holds
    snapshots: Snapshots = field(init=False)

    def __post_init__(self) -> None:
        self.snapshots = Snapshots(self.pool)

    # -- locks and retries ---------------------------------------------------------------------------
    def lock(self, key: str) -> StreamLock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = StreamLock()
        return lock

    @contextlib.asynccontextmanager
    async def locks(self, keys: Sequence[str]) -> AsyncIterator[None]:
        """Several locks, taken in sorted order so two commands never deadlock."""
        held = [self.lock(key) for key in sorted(set(keys))]
        async with contextlib.AsyncExitStack() as stack:
            for lock in held:
                await stack.enter_async_context(lock)
            yield

    async def retrying(self, attempt: Callable[[], Awaitable[Any]]) -> Any:
        for n in range(self.retries):
            try:
                return await attempt()
            except Conflict:
                await asyncio.sleep(random.uniform(0, 0.002 * (n + 1)))
        raise DomainError("CONFLICT", "the request kept conflicting with concurrent changes; retry it")

    # -- caches --------------------------------------------------------------------------------------
    async def config_version(self, org_id: str, conn: asyncpg.Connection) -> int:
        version = await conn.fetchval("SELECT config_version FROM orgs WHERE org_id = $1", uuid.UUID(org_id))
        if version is None:
            raise not_found("organization", org_id)
        return version

    async def catalog(self, org_id: str, conn: asyncpg.Connection) -> tuple[int, cat.Catalog]:
        """The org's configuration and its version, cached and revalidated against `orgs.config_version`."""
        version = await self.config_version(org_id, conn)
        return version, await self.catalog_at(org_id, version, conn)

    def cached_catalog(self, org_id: str) -> tuple[int, cat.Catalog] | None:
        cached = self._catalogs.get(org_id)
        return None if cached is None else cached[:2]

    async def catalog_at(self, org_id: str, version: int, conn: asyncpg.Connection) -> cat.Catalog:
        cached = self._catalogs.get(org_id)
        if cached and cached[0] == version:
            return cached[1]
        rows = await conn.fetch(_CONFIGURATION, uuid.UUID(org_id))
        rows.sort(key=_LOG_ORDER)  # the configuration as it happened, across its streams
        catalog = cat.Catalog(org_id=org_id)
        versions: dict[str, int] = {}
        for row in rows:
            catalog.apply(ev.from_stored(row[2], row[3]))
            versions[row[0]] = row[1]
        self._catalogs[org_id] = (version, catalog, versions)
        return catalog

    def catalog_stream_version(self, org_id: str, stream_id: str) -> int:
        return self._catalogs[org_id][2].get(stream_id, 0)

    async def day(self, stream_id: str, conn: asyncpg.Connection, catalog: cat.Catalog,
                  version: int | None = None) -> wd.WindowDay:
        """The window-day as the log has it, cached. `version`: the stream's version as just read from the
        database; a cached day behind it (another process wrote since) is loaded afresh, so a refusal is never
        decided on a stale day (an acceptance is checked by the append's expected version anyway). A cached
        day ahead of it may hold a decision its lock holder has folded in and not yet committed: the caller
        gets a copy of its own from the log, and the cache is left to the lock holder. A day indexed under
        another phone region than the org's now is loaded afresh too."""
        cached = self._days.get(stream_id)
        if cached is not None and cached.phone_region == catalog.settings.phone_region:
            if version is None or cached.version == version:
                self._days.move_to_end(stream_id)
                return cached
            if cached.version > version:
                return await self._load(stream_id, conn, catalog)
        return self._remember(await self._load(stream_id, conn, catalog))

    async def _load(self, stream_id: str, conn: asyncpg.Connection, catalog: cat.Catalog) -> wd.WindowDay:
        """A day read afresh, not cached: from its snapshot if it has one, then the events after it."""
        day = (await self._from_snapshots(conn, {stream_id: catalog}))[stream_id]
        start = day.version
        for stored in await self.store.read_stream(stream_id, start, conn=conn):
            day.apply(ev.from_stored(stored.type, stored.data))
        self._snapshot_if_long(day, start)
        return day

    async def _from_snapshots(self, conn: asyncpg.Connection,
                              wanted: dict[str, cat.Catalog]) -> dict[str, wd.WindowDay]:
        """Each day as its snapshot holds it, if it has one made under the org's phone region; else empty."""
        out = {}
        for stream, state in (await self.snapshots.read(conn, wanted)).items():
            out[stream] = wd.WindowDay.from_snapshot(stream, state)
            self._snapshotted[stream] = state["version"]
        return {stream: out.get(stream) or wd.WindowDay(*wd.split_stream_id(stream),
                                                         phone_region=catalog.settings.phone_region)
                for stream, catalog in wanted.items()}

    async def days(self, conn: asyncpg.Connection, wanted: dict[str, cat.Catalog],
                   verify: bool = True, hold: bool = False) -> dict[str, wd.WindowDay]:
        """Many window-days (stream id → its org's catalog) as the log has them: one query for their versions,
        one for the events not yet seen. `verify`: cached days behind the log are caught up in place (only the
        events after their version), so the caller must hold their locks: two callers catching up one cached
        day at once would both fold the same events into it, and it would claim a version whose bookings it
        does not all hold. Without `verify`, nothing cached is changed (safe without the locks, as when
        planning): cached days are taken as they are, and only days not cached are read, into new ones.
        `hold`: the versions query also locks the days' rows (in order) until the caller's transaction ends,
        so no other process moves them meanwhile."""
        out: dict[str, wd.WindowDay] = {}
        new: dict[str, cat.Catalog] = {}
        for stream, catalog in wanted.items():
            day = self._days.get(stream)
            if day is None or day.phone_region != catalog.settings.phone_region:
                new[stream] = catalog
            else:
                out[stream] = day
        if new:
            out.update(await self._from_snapshots(conn, new))
        starts = {stream: out[stream].version for stream in new}
        asked = list(out) if verify else [s for s in out if s in new]
        if asked:
            versions = await conn.fetch("SELECT stream_id, version FROM streams WHERE stream_id = ANY($1::text[])"
                                        + (" ORDER BY stream_id FOR UPDATE" if hold else ""), asked)
            behind = [(stream, out[stream].version, version) for stream, version in versions
                      if version > out[stream].version]
            if behind:
                rows = await conn.fetch(_EVENTS_AFTER, *map(list, zip(*behind)))
                rows.sort(key=_STREAM_ORDER)  # each stream's events in the order they happened
                for row in rows:
                    out[row[0]].apply(ev.from_stored(row[2], row[3]))
        for stream, start in starts.items():
            self._snapshot_if_long(out[stream], start)
        for stream, day in out.items():
            if verify or stream in new:
                self._remember(day)
            elif self._days.get(stream) is day:  # taken as it was: only its place in the cache changes
                self._days.move_to_end(stream)
        return out

    def cached_day(self, stream_id: str) -> wd.WindowDay | None:
        return self._days.get(stream_id)

    def _remember(self, day: wd.WindowDay) -> wd.WindowDay:
        self._days[day.stream_id] = day
        self._days.move_to_end(day.stream_id)
        if len(self._days) > self.cache_size:
            self._snapshotted.pop(self._days.popitem(last=False)[0], None)
        return day

    # -- snapshots -----------------------------------------------------------------------------------
    def _snapshot_if_long(self, day: wd.WindowDay, start: int) -> None:
        """`day` as just read (from `start`, its snapshot's version or 0): snapshotted if that took long."""
        if day.version - start >= SNAPSHOT_AFTER:
            self._take(day)

    def _take(self, day: wd.WindowDay) -> None:
        """Snapshot `day` as it is now, which must be what the log holds at its version. A day read afresh is: no
        caller reads a day after appending to it in the same transaction (the commit is a decision's last
        statement)."""
        self.snapshots.put(day)
        self._snapshotted[day.stream_id] = day.version

    async def close(self, seconds: float = 10) -> None:
        """On the way out: snapshot each cached day that moved on SNAPSHOT_AFTER events or more since its last
        snapshot and that nobody is deciding on now (a held lock may guard decisions folded in and not yet
        committed), then write them, for at most `seconds`."""
        for stream, day in self._days.items():
            lock = self._locks.get(stream)
            if (lock is None or not lock.held) and day.version - self._snapshotted.get(stream, 0) >= SNAPSHOT_AFTER:
                self._take(day)
        await self.snapshots.flush(seconds)

    async def fresh_day(self, stream_id: str, conn: asyncpg.Connection, catalog: cat.Catalog) -> wd.WindowDay:
        version = await conn.fetchval("SELECT version FROM streams WHERE stream_id = $1", stream_id)
        return await self.day(stream_id, conn, catalog, version or 0)

    def evict(self, *stream_ids: str) -> None:
        for stream in stream_ids:
            self._days.pop(stream, None)

    # -- commit --------------------------------------------------------------------------------------
    async def commit(self, conn: asyncpg.Connection, work: Work) -> list[StoredEvent]:
        """Write `work` atomically. Callers may already have folded its events into the cached window-days
        (deciding a batch needs that); if the commit fails, those days are evicted."""
        org = uuid.UUID(work.org_id)
        decided = work.decided()
        writes = [w for event in decided for p in INLINE for w in p.writes(event, org)]
        writes += [w for event in decided if event.type.startswith("hold.")
                   for w in write_side.hold_writes(event, org, work.catalog)]
        writes += [w for before, after in work.touched for w in write_side.writes(before, after, org, work.catalog)]
        writes += work.writes
        writes += _first_sightings(org, work)
        statements = compile_writes(writes)
        appends = [Append(c.stream_id, c.expected, [NewEvent(e.type, e.data(), schema_version=e.version,
                                                             metadata=m.as_dict()) for e, m in zip(c.events, c.metas)],
                          org_id=org) for c in work.changes]
        riding = [command_results.riding_append(org, list(work.results))] if work.results else []
        condition = None if work.config_version is None else SideWrite(_CONFIG_CURRENT, (org, work.config_version))
        streams = [change.stream_id for change in work.changes]
        try:
            if len({s.table for s in statements}) == len(statements):
                # One round trip: every row write rides in the append's statement, after its guard.
                riders = [SideWrite(s.text(GUARD), (s.rows,)) for s in statements]
                stored = await self.store.append(appends, conn, side_writes=[*riders, *riding], condition=condition,
                                                 order=work.order)
            else:
                async with conn.transaction():
                    stored = await self.store.append(appends, conn, side_writes=riding, condition=condition,
                                                     order=work.order)
                    for statement in statements:
                        await statement.run(conn)
        except asyncpg.UniqueViolationError as exc:
            self.evict(*streams)
            if exc.constraint_name == "command_results_pkey" and len(work.results) == 1:
                raise CommandAlreadyApplied(work.results[0][1].command_id) from None
            raise Conflict from None
        except (ConcurrencyError, asyncpg.ExclusionViolationError, asyncpg.DeadlockDetectedError):
            self.evict(*streams)
            raise Conflict from None
        except BaseException:
            self.evict(*streams)
            raise
        self.store.announce()
        return stored
