"""Runs projectors over the gap-safe log; each batch and its checkpoint commit in one transaction."""
from __future__ import annotations

import asyncio
import zlib
from dataclasses import dataclass, field

import asyncpg

from projections.appointments import AppointmentsProjector
from projections.base import Projector, apply_batch
from projections.schedule import ScheduleProjector
from services.logs import log
from services.store.eventstore import START, EventStore, LogPosition, LogWaker, load_checkpoint, save_checkpoint, \
    wait_flag


def all_projectors() -> list[Projector]:
    return [AppointmentsProjector(), ScheduleProjector()]


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
    pool: asyncpg.Pool
    store: EventStore
    waker: LogWaker
    poll_interval: float = 1.0
    settle: float = 0.005  # after a wake-up, let a burst of commits land so they are projected as one batch
    projectors: list[Projector] = field(default_factory=all_projectors)

    async def run(self) -> None:
        flag = self.waker.subscribe()
        while True:
            try:
                async with self.pool.acquire() as conn:
                    read = await run_batch(conn, self.store, self.projectors)
                if read:
                    continue
            except (asyncpg.PostgresError, OSError) as exc:
                log.warning("projector batch failed; retrying", error=str(exc))
                await asyncio.sleep(self.poll_interval)
            await wait_flag(flag, self.poll_interval)
            await asyncio.sleep(self.settle)

    def tasks(self) -> list[asyncio.Task]:
        return [asyncio.create_task(self.run(), name="projectors")]


async def checkpoint_of(pool: asyncpg.Pool, name: str) -> LogPosition:
    async with pool.acquire() as conn:
        return await load_checkpoint(conn, name)


async def wait_for_position(pool: asyncpg.Pool, store: EventStore, name: str, global_position: int,
                            timeout: float) -> bool:
    """Wait (bounded) until projector `name` has applied the event at `global_position`."""
    target = await store.position_of(global_position)
    if target is None:
        return True
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if await checkpoint_of(pool, name) >= target:
            return True
        if asyncio.get_running_loop().time() >= deadline:
            return False
        await asyncio.sleep(0.01)


async def rebuild(pool: asyncpg.Pool, store: EventStore, names: list[str] | None = None) -> dict[str, dict]:
    """Empty the chosen read models and replay the whole log into them, reading it once, in one transaction."""
    chosen = [p for p in all_projectors() if not names or p.name in names]
    report: dict[str, dict] = {}
    async with pool.acquire() as conn, conn.transaction():
        for projector in chosen:  # in the runner's order, so the two never deadlock
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _lock_key(projector))
            for table in projector.tables:
                await conn.execute(f"TRUNCATE {table}")
            await conn.execute("DELETE FROM checkpoints WHERE name = $1", projector.name)
        position, events = START, 0
        while batch := await store.read_log(position, 5000, conn):
            for projector in chosen:
                await apply_batch(conn, projector, batch)
            events += len(batch)
            position = batch[-1].log_position
        for projector in chosen:
            if events:
                await save_checkpoint(conn, projector.name, position)
            rows = {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in projector.tables}
            report[projector.name] = {"events": events, "rows": rows}
    return report
