"""Projectors turn events into row writes; one compiler turns row writes into set-wise statements.

The same projector code writes the API's read models inline (as part of the command's own statement or
transaction), replays them on `projections rebuild`, and feeds projections that run asynchronously. A
statement carries all its rows in one JSON parameter (see `recordset`), so a burst of events costs a few
statements, not one per event, and a statement costs one parameter to encode however many columns it has
(an array parameter per column cost asyncpg several microseconds each, on every command).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterable, NamedTuple, Protocol

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


class Write(NamedTuple):
    """One row's change. `sql` is set-wise: its only parameter, $1, holds every row (see `recordset`), and
    `{guard}` marks where a condition goes when the statement rides inside an append (see SideWrite).
    `keys` name the rows it touches: two writes sharing a key keep their order, others may be merged.
    (A named tuple: every event makes a few, and a frozen dataclass costs 3 times as much to make.)"""
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

    async def run(self, conn: asyncpg.Connection, timeout: float | None = None) -> None:
        await conn.execute(self.text(), self.rows, timeout=timeout)


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


# -- the same statements folded in memory, for a rebuild that loads its rows with COPY ----------------------
# A row in memory is a list of a table's columns in COPY order, the insert statement's columns first.
Fold = Callable[[dict[Hashable, list], Hashable, tuple], None]  # (a table's rows by key, the write's key, its row)


def inserting(row: tuple[str, ...], replace: str = "", coalesce: str = "", **defaults: Any) -> Fold:
    """What `INSERT (the row's columns but those in defaults) … ON CONFLICT (key)` does: DO NOTHING, or SET
    each `replace` column to the new value and each `coalesce` column to coalesce(new, old)."""
    tail = [defaults[column] for column in row[len(row) - len(defaults):]]
    replaced, kept = [(row.index(c),) * 2 for c in replace.split()], [(row.index(c),) * 2 for c in coalesce.split()]

    def fold(rows: dict[Hashable, list], key: Hashable, values: tuple) -> None:
        current = rows.get(key)
        if current is None:
            rows[key] = [*values, *tail]
        else:
            _set(current, values, replaced, kept)
    return fold


def updating(row: tuple[str, ...], columns: str, replace: str = "", coalesce: str = "") -> Fold:
    """What `UPDATE … SET` does to the row of the write's key (the first of `columns`), if there is one."""
    names = columns.split()
    replaced = [(row.index(c), names.index(c)) for c in replace.split()]
    kept = [(row.index(c), names.index(c)) for c in coalesce.split()]

    def fold(rows: dict[Hashable, list], key: Hashable, values: tuple) -> None:
        current = rows.get(key)
        if current is not None:
            _set(current, values, replaced, kept)
    return fold


def _set(current: list, values: tuple, replaced: list[tuple[int, int]], kept: list[tuple[int, int]]) -> None:
    """SET column = new (replaced), column = coalesce(new, column) (kept): (row index, statement index) pairs."""
    for i, j in replaced:
        current[i] = values[j]
    for i, j in kept:
        if values[j] is not None:
            current[i] = values[j]


def deleting(rows: dict[Hashable, list], key: Hashable, values: tuple) -> None:
    rows.pop(key, None)


class Projector(Protocol):
    """Turns one event into row writes. Pure: no I/O. A projector may also say how a rebuild loads its tables
    with COPY: `columns` (each table's columns in COPY order) and `folds` (each of its statements' effect on a
    row, by the statement's SQL); without them, a rebuild runs its statements."""

    name: str
    tables: tuple[str, ...]

    def writes(self, event: ev.Event, org_id) -> list[Write]: ...


def project(projectors: Iterable[Projector], events: Iterable[tuple[ev.Event, Any]]) -> list[Statement]:
    """Every projector's writes for (event, org_id) pairs in log order, compiled."""
    chosen = list(projectors)
    return compile_writes(w for event, org_id in events for p in chosen for w in p.writes(event, org_id))


@dataclass
class Load:
    """A rebuild's writes split batch by batch: a row no earlier batch wrote is folded in memory and loaded
    with COPY once the batch is folded; a write to a row an earlier batch loaded (a booking cancelled months
    later) runs as its statement. Either way a row ends as the statements alone would leave it; only the rows
    of one batch are held in memory."""
    columns: dict[str, tuple[str, ...]] = field(default_factory=dict)  # table → its COPY columns
    folds: dict[str, Fold] = field(default_factory=dict)  # statement SQL → its fold
    seen: dict[str, set] = field(default_factory=dict)  # table → keys some batch has folded

    @classmethod
    def of(cls, projectors: Iterable[Projector]) -> "Load":
        load = cls()
        for projector in projectors:
            folds = getattr(projector, "folds", None)
            if folds:
                load.columns.update(projector.columns)
                load.folds.update(folds)
        load.seen = {table: set() for table in load.columns}
        return load


@dataclass
class Split:
    """One batch's writes → rows to COPY per table, and statements to run before them. Writes may be added in
    several calls, in log order, so a caller can let others run between them."""
    load: Load
    fresh: dict[str, dict[Hashable, list]] = field(init=False)  # table → rows folded in memory, by key
    late: list[Write] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.fresh = {table: {} for table in self.load.columns}

    def add(self, writes: Iterable[Write]) -> None:
        fresh, late = self.fresh, self.late
        folds, seen = self.load.folds, self.load.seen
        for write in writes:
            fold, key = folds.get(write.sql), write.keys[0]
            if fold is None or (key in seen[write.table] and key not in fresh[write.table]):
                late.append(write)
            else:
                seen[write.table].add(key)
                fold(fresh[write.table], key, write.row)

    def result(self) -> tuple[dict[str, list[list]], list[Statement]]:
        return ({table: list(rows.values()) for table, rows in self.fresh.items() if rows},
                compile_writes(self.late))


def decoded(stored: Iterable[tuple[str, Any, Any]]) -> list[tuple[ev.Event, Any]]:
    """Stored events as (type, data, org_id), those of types this release knows, as (event, org_id) pairs."""
    return [(ev.from_stored(type_, data), org_id) for type_, data, org_id in stored if type_ in ev.EVENT_TYPES]


async def apply_batch(conn: asyncpg.Connection, projector: Projector, batch) -> None:
    for statement in project([projector], decoded((s.type, s.data, s.org_id) for s in batch)):
        await statement.run(conn)
