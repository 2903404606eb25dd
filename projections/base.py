from __future__ import annotations

from itertools import groupby
from typing import Any, Protocol

import asyncpg

from domain import events as ev

Statement = tuple[str, tuple[Any, ...]]


class Projector(Protocol):
    """Turns events into read-model writes; runs inside the transaction that also moves its checkpoint."""

    name: str
    tables: tuple[str, ...]

    def statements(self, event: ev.Event, stored) -> list[Statement]: ...


async def apply_batch(conn: asyncpg.Connection, projector: Projector, batch) -> None:
    """Project a batch of stored events. Runs of the same statement go to the server together (executemany is
    pipelined), in log order, so a batch costs a few round trips rather than one per event."""
    writes: list[Statement] = []
    for stored in batch:
        if stored.type in ev.EVENT_TYPES:
            writes.extend(projector.statements(ev.from_stored(stored.type, stored.data), stored))
    for sql, group in groupby(writes, key=lambda w: w[0]):
        await conn.executemany(sql, [args for _, args in group])
