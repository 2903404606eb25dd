"""Projectors turn events into row writes; one compiler turns row writes into set-wise statements.

The same projector code writes the API's read models inline (as part of the command's own statement or
transaction), replays them on `projections rebuild`, and feeds projections that run asynchronously. A
statement carries all its rows in one JSON parameter (see `recordset`), so a burst of events costs a few
statements, not one per event, and a statement costs one parameter to encode however many columns it has
(an array parameter per column cost asyncpg several microseconds each, on every command).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable, Protocol

import asyncpg

from domain import events as ev

GUARD_SLOT = "{guard}"
_CAST = {"jsonb": "r->{n}"}


def recordset(columns: str, param: int = 1, alias: str = "rows") -> str:
    """A set-wise statement's rows as a table: parameter $`param` is a JSON array of rows, each a JSON array
    of the `columns` ("name type, …") in order. Use as `… FROM {recordset("a text, b uuid")} …`."""
    casts = []
    for n, column in enumerate(c.strip() for c in columns.split(",")):
        name, kind = column.split()
        casts.append(f"{_CAST.get(kind, '(r->>{n})::' + kind).format(n=n)} AS {name}")
    return f"(SELECT {', '.join(casts)} FROM jsonb_array_elements(${param}::jsonb) AS r) AS {alias}"


@dataclass(frozen=True)
class Write:
    """One row's change. `sql` is set-wise: its only parameter, $1, holds every row (see `recordset`), and
    `{guard}` marks where a condition goes when the statement rides inside an append (see SideWrite).
    `keys` name the rows it touches: two writes sharing a key keep their order, others may be merged."""
    table: str
    sql: str
    row: tuple[Any, ...]
    keys: tuple[Hashable, ...]


@dataclass
class Statement:
    table: str
    sql: str
    rows: list[tuple[Any, ...]] = field(default_factory=list)

    def text(self, guard: str = "true") -> str:
        return self.sql.replace(GUARD_SLOT, guard)

    async def run(self, conn: asyncpg.Connection) -> None:
        await conn.execute(self.text(), self.rows)


def compile_writes(writes: Iterable[Write]) -> list[Statement]:
    """Row writes → statements, in an order that keeps every row's writes in sequence. A write joins the latest
    statement of its SQL unless a write to one of its rows came at or after that statement. (Plain loops: this
    runs on every command.)"""
    out: list[Statement] = []
    latest: dict[str, int] = {}  # sql → index of its latest statement
    touched: dict[tuple[str, Hashable], int] = {}  # (table, key) → index of the last statement touching it
    for write in writes:
        table = write.table
        at = latest.get(write.sql)
        if at is not None:
            for key in write.keys:
                if touched.get((table, key), -1) >= at:
                    at = None
                    break
        if at is None:
            at = len(out)
            out.append(Statement(table, write.sql))
            latest[write.sql] = at
        out[at].rows.append(write.row)
        for key in write.keys:
            touched[(table, key)] = at
    return out


class Projector(Protocol):
    """Turns one event into row writes. Pure: no I/O."""

    name: str
    tables: tuple[str, ...]

    def writes(self, event: ev.Event, org_id) -> list[Write]: ...


def project(projectors: Iterable[Projector], events: Iterable[tuple[ev.Event, Any]]) -> list[Statement]:
    """Every projector's writes for (event, org_id) pairs in log order, compiled."""
    chosen = list(projectors)
    return compile_writes(w for event, org_id in events for p in chosen for w in p.writes(event, org_id))


def decoded(stored: Iterable[tuple[str, Any, Any]]) -> list[tuple[ev.Event, Any]]:
    """Stored events as (type, data, org_id), those of types this release knows, as (event, org_id) pairs."""
    return [(ev.from_stored(type_, data), org_id) for type_, data, org_id in stored if type_ in ev.EVENT_TYPES]


async def apply_batch(conn: asyncpg.Connection, projector: Projector, batch) -> None:
    for statement in project([projector], decoded((s.type, s.data, s.org_id) for s in batch)):
        await statement.run(conn)
