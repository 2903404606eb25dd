"""Window-day snapshots (migration 015): reading the ones that fit, and writing new ones off the deciding path.

A day read afresh starts from its snapshot, if one of this format is at or behind the log, and folds only the
events after it. When to take one is the unit of work's policy (services/unit_of_work.py); a snapshot is only
ever of a day as the log holds it at its version. Folding an event costs ~25 µs and reading a booking back from a
snapshot ~7-15 (bench/snapshots.py), so a few dozen events repay one.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson

from domain import catalog as cat
from domain import windowday as wd
from services.logs import log

SNAPSHOT_AFTER = 100  # events folded since the last snapshot that make a new one worth taking
_READ = ("SELECT n.stream_id, n.state FROM window_day_snapshots n JOIN streams s USING (stream_id)"
         " WHERE n.stream_id = ANY($1::text[]) AND n.format = $2 AND n.version <= s.version")
# A snapshot replaces an older one (any format: the current one wins), and is never ahead of the log.
_SAVE = (
    "INSERT INTO window_day_snapshots AS n (stream_id, version, format, state)"
    " SELECT $1, $2, $3, $4::text::json WHERE EXISTS (SELECT 1 FROM streams WHERE stream_id = $1 AND version >= $2)"
    " ON CONFLICT (stream_id) DO UPDATE SET version = EXCLUDED.version, format = EXCLUDED.format,"
    " state = EXCLUDED.state, taken_at = now() WHERE n.version < EXCLUDED.version OR n.format <> EXCLUDED.format")


@dataclass
class Snapshots:
    pool: asyncpg.Pool
    _to_save: dict[str, tuple[int, str]] = field(default_factory=dict)  # stream → (version, state as JSON text)
    _saving: asyncio.Task | None = None

    async def read(self, conn: asyncpg.Connection, wanted: dict[str, cat.Catalog]) -> dict[str, dict[str, Any]]:
        """The states of those days that have a snapshot of this format, at or behind the log, made under the
        org's phone region now."""
        rows = await conn.fetch(_READ, list(wanted), wd.SNAPSHOT_FORMAT)
        return {stream: state for stream, state in rows
                if state["phone_region"] == wanted[stream].settings.phone_region}

    def put(self, day: wd.WindowDay) -> None:
        """Queue `day` as it is now (serialised at once, before anyone folds a decision into it)."""
        self._to_save[day.stream_id] = (day.version, orjson.dumps(day.snapshot()).decode())
        if self._saving is None or self._saving.done():
            self._saving = asyncio.get_running_loop().create_task(self._write(), name="snapshots")

    async def _write(self) -> None:
        """Write what is queued. Snapshots only save work, so a failure is logged and they are dropped."""
        while self._to_save:
            batch, self._to_save = self._to_save, {}
            try:  # in stream order, as another process writing the same days at once does (no deadlock)
                async with self.pool.acquire() as conn:
                    await conn.executemany(_SAVE, [(stream, version, wd.SNAPSHOT_FORMAT, state)
                                                   for stream, (version, state) in sorted(batch.items())])
            except Exception as exc:
                log.warning("window-day snapshots not written", days=len(batch), error=repr(exc)[:300])

    async def flush(self, seconds: float) -> None:
        """Wait for what is queued to be written, for at most `seconds`."""
        if self._saving is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._saving), seconds)
        except asyncio.TimeoutError:
            log.warning("window-day snapshots still being written at stop; the rest are left out")
            self._saving.cancel()
