"""Projections that follow the log, and rebuilds of any projection from the log.

The API's read models are written inline by the unit of work; this module replays the same projector code
for `projections rebuild`, and runs asynchronous projections (none of the API's answers depend on them) from
their checkpoints, each batch and its checkpoint in one transaction.
"""
from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import zlib
from dataclasses import dataclass, field

import asyncpg

from projections.base import Load, Projector, Split, apply_batch, decoded
from projections.registry import ASYNCHRONOUS, INLINE, all_projectors
from services.logs import log
from services.loops import health
from services.store.eventstore import START, EventStore, LogPosition, position_of, save_checkpoint
from services.store.pool import limit_statements
from services.store.waker import LogWaker, wait_flag

REBUILD_BATCH = 20_000
# Events projected between two chances for the writer to run (see _projected). Measured with bench.rebuild: 100,
# 250 and 1,000 alike; one block per batch was 13% slower.
REBUILD_SLICE = 250
# Any one statement of a rebuild, at most. Not the request limit (STATEMENT_TIMEOUT_SECONDS): a rebuild's index
# builds and counts grow with the history (one would pass 10 s at some 6M appointments), and its TRUNCATE waits
# for whoever reads the tables meanwhile.
MAINTENANCE_TIMEOUT = 3600.0


def _lock_key(projector: Projector) -> int:
    return zlib.crc32(projector.name.encode())


async def run_batch(conn: asyncpg.Connection, store: EventStore, projectors: list[Projector],
                    limit: int = 1000) -> int:
    """Project the next batch of the log into every projector, each from its own checkpoint, in one
    transaction; returns how many events were read. Several runners may race: the advisory locks let one at a
    time move a projector's checkpoint. The log is read once for all of them."""
    names = [p.name for p in projectors]
    async with conn.transaction():
        # Lock first, then read the checkpoints in a later statement: its snapshot then sees what the previous
        # holder of the lock committed.
        await conn.execute("SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) k",
                           [_lock_key(p) for p in projectors])
        rows = await conn.fetch("SELECT n.name, c.transaction_id::text::bigint AS tx, c.global_position"
                                " FROM unnest($1::text[]) n(name) LEFT JOIN checkpoints c ON c.name = n.name", names)
        checkpoints = {r["name"]: START if r["tx"] is None else LogPosition(r["tx"], r["global_position"])
                       for r in rows}
        batch = await store.read_log(min(checkpoints.values()), limit, conn)
        if not batch:
            return 0
        end = batch[-1].log_position
        behind = [p for p in projectors if checkpoints[p.name] < end]  # one just rebuilt may be ahead of another
        for projector in behind:
            after = checkpoints[projector.name]
            await apply_batch(conn, projector, [e for e in batch if e.log_position > after])
        await conn.execute(
            "INSERT INTO checkpoints (name, transaction_id, global_position)"
            " SELECT unnest($1::text[]), $2::text::xid8, $3 ON CONFLICT (name) DO UPDATE"
            " SET transaction_id = EXCLUDED.transaction_id, global_position = EXCLUDED.global_position,"
            " updated_at = now()", [p.name for p in behind], str(end.transaction_id), end.global_position)
        return len(batch)


@dataclass
class ProjectorRunner:
    """Follows the log for asynchronous projections."""
    pool: asyncpg.Pool
    store: EventStore
    waker: LogWaker
    poll_interval: float = 1.0
    settle: float = 0.005  # after a wake-up, let a burst of commits land so they are projected as one batch
    projectors: list[Projector] = field(default_factory=lambda: list(ASYNCHRONOUS))

    async def run(self) -> None:
        flag = self.waker.subscribe()
        loop = health("projectors")
        while True:
            try:
                async with self.pool.acquire() as conn:
                    read = await run_batch(conn, self.store, self.projectors)
                loop.ok()
                if read:
                    continue
            except Exception as exc:  # never dies: backs off and resumes from its checkpoint
                await loop.failed(exc)
                continue
            await wait_flag(flag, self.poll_interval)
            await asyncio.sleep(self.settle)

    def tasks(self) -> list[asyncio.Task]:
        return [asyncio.create_task(self.run(), name="projectors")] if self.projectors else []


async def rebuild(pool: asyncpg.Pool, store: EventStore, names: list[str] | None = None,
                  batch_size: int = REBUILD_BATCH, statement_timeout: float = MAINTENANCE_TIMEOUT,
                  slice_size: int = REBUILD_SLICE) -> dict[str, dict]:
    """Empty the chosen read models and replay the whole log into them, reading it once, in one transaction.
    Rows a batch creates go in by COPY, folded in memory (projections.base.Load); later changes to them run
    as the projectors' statements.

    TRUNCATE locks the tables: inline writers wait until the rebuild commits, so every committed event that
    touches them is read (without the gap-safe bound, which a waiting writer's open transaction would hold
    back), and the writers then apply theirs on top. Asynchronous projections keep the gap-safe read, and
    resume from the checkpoint set here.

    Its statements run under `statement_timeout`, the server's limit and the client's (the pool's limit, a
    request's, is lifted for this transaction)."""
    chosen = [p for p in all_projectors() if not names or p.name in names]
    unknown = set(names or ()) - {p.name for p in chosen}
    if unknown:
        raise ValueError(f"no projection named {', '.join(sorted(unknown))}")
    gap_safe = any(p in ASYNCHRONOUS for p in chosen)
    report: dict[str, dict] = {}
    started = time.perf_counter()
    async with pool.acquire() as conn, conn.transaction(), _no_cycle_collection():
        limit = await limit_statements(conn, statement_timeout)
        for projector in chosen:  # in the runner's order, so the two never deadlock
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _lock_key(projector), timeout=limit)
            for table in projector.tables:
                await conn.execute(f"TRUNCATE {table}", timeout=limit)
            await conn.execute("DELETE FROM checkpoints WHERE name = $1", projector.name, timeout=limit)
        # Lookup indexes are built once at the end rather than kept up row by row (the unique ones stay: the
        # projectors' upserts need them). In the same transaction: no reader ever sees a table without them.
        lookups = await conn.fetch(
            "SELECT i.indexrelid::regclass::text AS name, pg_get_indexdef(i.indexrelid) AS definition"
            " FROM pg_index i WHERE i.indrelid = ANY($1::regclass[]) AND NOT i.indisunique"
            " AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)",
            [t for p in chosen for t in p.tables], timeout=limit)
        for index in lookups:
            await conn.execute(f"DROP INDEX {index['name']}", timeout=limit)
        load = Load.of(chosen)
        position, events = START, 0
        async for batch, statements, rows in _projected(pool, store, chosen, load, gap_safe, batch_size,
                                                        slice_size):
            for statement in statements:
                await statement.run(conn, timeout=limit)
            for table, records in rows.items():
                await conn.copy_records_to_table(table, records=records, columns=load.columns[table], timeout=limit)
            events += len(batch)
            position = position_of(batch[-1])
        await conn.execute("SET LOCAL maintenance_work_mem = '256MB'", timeout=limit)
        for index in lookups:
            await conn.execute(index["definition"], timeout=limit)
        for projector in chosen:
            if events and projector not in INLINE:
                await save_checkpoint(conn, projector.name, position, timeout=limit)
            rows = {t: await conn.fetchval(f"SELECT count(*) FROM {t}", timeout=limit) for t in projector.tables}
            report[projector.name] = {"events": events, "rows": rows}
    log.info("rebuilt", projections=[p.name for p in chosen], events=events,
             seconds=round(time.perf_counter() - started, 3))
    return report


@contextlib.asynccontextmanager
async def _no_cycle_collection():
    """A rebuild allocates millions of objects and frees them batch by batch without cycles; Python's cycle
    collector would walk every live one again and again meanwhile (40% of a rebuild's CPU)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


async def _projected(pool: asyncpg.Pool, store: EventStore, projectors: list[Projector], load: Load,
                     gap_safe: bool, batch_size: int, slice_size: int):
    """The log in batches, each with its statements and its rows to COPY (a Split of `load`), read and
    projected on a connection of its own one batch ahead of the writer: PostgreSQL writes a batch while Python
    reads and projects the next, `slice_size` events at a time. (The reader starts once the rebuild holds its
    locks: an event it cannot see yet belongs to a writer that waits on them, and that writer projects it itself
    after the rebuild commits.)"""
    ready: asyncio.Queue = asyncio.Queue(maxsize=1)

    async def read() -> None:
        position = START
        try:
            async with pool.acquire() as reader:
                while batch := await store.replay_log(position, batch_size, reader, gap_safe=gap_safe):
                    position = position_of(batch[-1])
                    split = Split(load)
                    for start in range(0, len(batch), slice_size):
                        events = decoded((r["event_type"], r["data"], r["org_id"])
                                         for r in batch[start:start + slice_size])
                        split.add(w for event, org in events for p in projectors for w in p.writes(event, org))
                        # Between slices the writer hands PostgreSQL the next chunk of the previous batch's COPY
                        # (a chunk is all it can be ahead): projected in one block, a batch left the writer's
                        # backend idle for as long as it took.
                        await asyncio.sleep(0)
                    rows, statements = split.result()
                    await ready.put((batch, statements, rows))
        finally:  # the end of the log, or a failure the writer then raises
            await ready.put(None)

    reading = asyncio.create_task(read(), name="rebuild-reader")
    try:
        while (item := await ready.get()) is not None:
            yield item
        await reading  # its failure, if any, is the rebuild's
    finally:
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)


async def rebuild_after_migrations(pool: asyncpg.Pool, store: EventStore, applied: list[str]) -> None:
    """A migration that made read models inline leaves rows the old projector may not have caught up on."""
    if any(name.startswith(("007_", "008_")) for name in applied):
        await rebuild(pool, store, [p.name for p in INLINE])
