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


async def run_batch(conn: asyncpg.Connection, store: EventStore, projector: Projector, limit: int = 500) -> int:
    """Project the next batch; returns how many events it applied. Several runners may race: the advisory
    lock lets one at a time move a projector's checkpoint."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", zlib.crc32(projector.name.encode()))
        checkpoint = await load_checkpoint(conn, projector.name)
        batch = await store.read_log(checkpoint, limit, conn)
        await apply_batch(conn, projector, batch)
        if batch:
            await save_checkpoint(conn, projector.name, batch[-1].log_position)
        return len(batch)


@dataclass
class ProjectorRunner:
    pool: asyncpg.Pool
    store: EventStore
    waker: LogWaker
    poll_interval: float = 1.0
    projectors: list[Projector] = field(default_factory=all_projectors)

    async def run(self, projector: Projector) -> None:
        flag = self.waker.subscribe()
        while True:
            try:
                async with self.pool.acquire() as conn:
                    applied = await run_batch(conn, self.store, projector)
                if applied:
                    continue
            except (asyncpg.PostgresError, OSError) as exc:
                log.warning("projector batch failed; retrying", projector=projector.name, error=str(exc))
                await asyncio.sleep(self.poll_interval)
            await wait_flag(flag, self.poll_interval)

    def tasks(self) -> list[asyncio.Task]:
        return [asyncio.create_task(self.run(p), name=f"projector-{p.name}") for p in self.projectors]


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
    """Empty the chosen read models and replay the whole log into them, in one transaction each."""
    report: dict[str, dict] = {}
    for projector in all_projectors():
        if names and projector.name not in names:
            continue
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", zlib.crc32(projector.name.encode()))
            for table in projector.tables:
                await conn.execute(f"TRUNCATE {table}")
            await conn.execute("DELETE FROM checkpoints WHERE name = $1", projector.name)
            position, events = START, 0
            while batch := await store.read_log(position, 5000, conn):
                await apply_batch(conn, projector, batch)
                events += len(batch)
                position = batch[-1].log_position
            if events:
                await save_checkpoint(conn, projector.name, position)
            rows = {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in projector.tables}
        report[projector.name] = {"events": events, "rows": rows}
    return report
