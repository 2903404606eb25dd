"""The hold sweeper: appends hold.expired (and passes expired waitlist offers on) within a few seconds of
expiry. Decisions never wait for it (an expired hold stops counting at its `expires_at`); it brings the log and
the read models up to date, and gives an expired offer's place to the next in line. Several sweepers may run:
each window-day is decided under optimistic concurrency, so a hold expires once.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

import asyncpg
from prometheus_client import Counter

from services.handler import CommandHandler
from services.loops import forever
from services.outcome import Meta

EXPIRED = Counter("slotledger_holds_expired_total", "Holds the sweeper expired")


@dataclass
class HoldSweeper:
    pool: asyncpg.Pool
    handler: CommandHandler
    interval_seconds: float = 1.0
    batch_size: int = 500

    async def sweep(self) -> int:
        """Expire every hold past its time, window-day by window-day; returns how many expired."""
        async with self.pool.acquire() as conn:
            due = await conn.fetch(
                "SELECT DISTINCT org_id, stream_id FROM rm_holds WHERE status = 'held' AND expires_at <= $1"
                " LIMIT $2", self.handler.clock(), self.batch_size)
        expired = 0
        for row in due:
            expired += await self.handler.expire_holds(str(row["org_id"]), row["stream_id"], Meta(actor="sweeper"))
        EXPIRED.inc(expired)
        return expired

    async def run(self) -> None:
        await forever("sweeper", self.sweep, lambda: asyncio.sleep(self.interval_seconds))
