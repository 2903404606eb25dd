"""Kafka command results: the one place they are stored and read back (exactly-once effects, DESIGN §5).

A command that appends events stores its result in the append's own statement, given the log position of its
last event; a command without an effect (a refusal, a no-op, an idempotent replay) stores it alone. Either
way the first stored result for a command_id is the answer to every later delivery of it. A booking's or a
reschedule's result is stored without the appointment's record, which its event already holds: it is read back
from there.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from domain.events import Event
from schemas.kafka import CommandResult
from services.outcome import Meta, Outcome
from services.store.eventstore import SideWrite


class CommandAlreadyApplied(Exception):
    """Another delivery of this command_id committed first; nothing of this one was written."""

    def __init__(self, command_id: str):
        super().__init__(f"command {command_id} was already applied")
        self.command_id = command_id


@dataclass(frozen=True)
class PendingResult:
    """A result to store with the event at `stream_version` of the stream it rides on; its position is that
    event's, filled in by the statement. `data_in_event`: its data is the record the event holds, so it is
    stored without it."""
    command_id: str
    result: dict[str, Any]
    stream_version: int
    data_in_event: bool = False

    @property
    def stored(self) -> dict[str, Any]:
        """The result as stored."""
        return {k: v for k, v in self.result.items() if k != "data"} if self.data_in_event else self.result


def pending(meta: Meta, outcome: Outcome, stream_version: int, riding: Event | None = None) -> PendingResult | None:
    """`riding`: the event at `stream_version`. When the result's data is the appointment record that event
    holds (a booking's, a reschedule's), the record is not stored a second time."""
    if meta.command_id is None:
        return None
    body = CommandResult.ok_body(meta.command_id, outcome.status, outcome.data, None, outcome.idempotent)
    record = getattr(riding, "appointment", None)
    return PendingResult(meta.command_id, body, stream_version,
                         data_in_event=record is not None and _is_record(outcome.data, record))


def _is_record(data: Any, record: dict[str, Any]) -> bool:
    """Whether `data` is `{**record, "position": None}`, as read back (without building it: every Kafka create
    asks)."""
    return (isinstance(data, dict) and len(data) == len(record) + 1 and "position" not in record
            and data.get("position", 0) is None and data.items() >= record.items())


def riding_append(org_id: uuid.UUID, results: list[tuple[str, PendingResult]]) -> SideWrite:
    """(stream id, result) pairs, each stored with its event."""
    return SideWrite(
        "INSERT INTO command_results (command_id, org_id, result, position, data_in_event)"
        " SELECT c.id, $2::uuid, c.result, i.global_position, c.data_in_event"
        " FROM (SELECT (r->>0)::uuid AS id, r->1 AS result, r->>2 AS stream, (r->>3)::int AS version,"
        " (r->>4)::boolean AS data_in_event FROM jsonb_array_elements($1::jsonb) AS r) AS c"
        " JOIN ins i ON i.stream_id = c.stream AND i.stream_version = c.version",
        ([(r.command_id, r.stored, stream, r.stream_version, r.data_in_event) for stream, r in results], org_id))


# A stored result with its position and, when its data is its event's record, that record.
_READ = ("SELECT c.command_id, c.result, c.position, e.data->'appointment' AS record FROM command_results c"
         " LEFT JOIN events e ON c.data_in_event AND e.global_position = c.position")


async def store_without_effect(conn: asyncpg.Connection, results: list[tuple[uuid.UUID, Any, dict]]
                               ) -> dict[uuid.UUID, dict]:
    """Store (command_id, org_id, result) rows; answers each command's stored result (an earlier delivery's, if
    one was stored first)."""
    if not results:
        return {}
    rows = await conn.fetch(
        "WITH new AS (INSERT INTO command_results (command_id, org_id, result)"
        " SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::jsonb[]) ON CONFLICT (command_id) DO NOTHING"
        " RETURNING command_id, result, position)"
        " SELECT command_id, result, position, NULL::jsonb AS record FROM new UNION ALL " + _READ
        + " WHERE c.command_id = ANY($1::uuid[]) AND c.command_id NOT IN (SELECT command_id FROM new)",
        [c for c, _, _ in results], [o for _, o, _ in results], [r for _, _, r in results])
    return {row["command_id"]: _answer(row) for row in rows}


async def recall(conn: asyncpg.Connection, command_ids: list[uuid.UUID]) -> dict[uuid.UUID, dict]:
    """The stored results of those commands that have one."""
    rows = await conn.fetch(_READ + " WHERE c.command_id = ANY($1::uuid[])", command_ids)
    return {row["command_id"]: _answer(row) for row in rows}


async def stored(conn: asyncpg.Connection, command_id: uuid.UUID | str) -> dict | None:
    row = await conn.fetchrow(_READ + " WHERE c.command_id = $1", uuid.UUID(str(command_id)))
    return None if row is None else _answer(row)


def _answer(row: asyncpg.Record) -> dict:
    """A stored result as it was answered: with its event's record as its data if it was stored without it
    (migration 017), and with the position of its events, kept beside it (migration 016), at the top and, for an
    appointment's record, in its data."""
    result, position = row["result"], row["position"]
    if row["record"] is not None:
        result["data"] = {**row["record"], "position": None}
    if position is not None:
        result["position"] = position
        if isinstance(result.get("data"), dict) and "position" in result["data"]:
            result["data"]["position"] = position
    return result
