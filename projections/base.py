from __future__ import annotations

from typing import Protocol

import asyncpg

from domain import events as ev


class Projector(Protocol):
    """Turns events into read-model rows; runs inside the transaction that also moves its checkpoint."""

    name: str
    tables: tuple[str, ...]

    async def apply(self, conn: asyncpg.Connection, event: ev.Event, stored) -> None: ...

