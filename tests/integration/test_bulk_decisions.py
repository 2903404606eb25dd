"""Kafka commands decided set-wise (services/bulk.py) against a real PostgreSQL answer exactly as the same
commands decided one by one through the handler: capacity, the duplicate rule across windows, places freed
and retaken within the batch, external references, unknown appointments and orgs, a doctor's command in the
middle (careful path, in its turn), and every effect committed with its result once."""
from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

from domain.errors import DomainError
from schemas.kafka import COMMAND, CommandResult
from services import commands
from services.bulk import BulkDecider, Decided
from services.bulk_facts import read
from services.command_results import recall
from services.handler import CommandHandler
from services.outcome import Meta
from tests.builders import create_body
from tests.integration.test_command_handler import at, clinic

DAY = dt.date.today() + dt.timedelta(days=3)
NEXT = DAY + dt.timedelta(days=1)


@dataclass
class Item:
    command: Any
    answer: tuple | None = None
    decided: Decided | None = None  # set-wise (None: the careful path answered it)


def envelope(org_id: str, n: int, type_: str, payload: dict, appointment_id: str | None = None) -> Any:
    raw = {"command_id": str(uuid.uuid5(uuid.UUID(org_id), str(n))), "org_id": org_id, "type": type_, "payload": payload}
    if appointment_id:
        raw["appointment_id"] = appointment_id
    return COMMAND.validate_python(raw)


def summary(status: int, data: dict | None = None, code: str | None = None) -> tuple:
    if code is not None:
        return (status, code)
    return (status, data["date"], data["session"], data["status"], data["parent_phone"], data["version"])


def script(org_id: str, ids: dict[str, str]) -> list[Any]:
    """Commands in batch order; `ids` maps a label to the appointment id the first answer gave it."""
    c = lambda n, t, p, a=None: envelope(org_id, n, t, p, ids.get(a, a))  # noqa: E731
    return [
        c(1, "create_appointment", create_body(at("09:30"), "+11")),
        c(2, "create_appointment", create_body(at("09:45"), "+12")),
        c(3, "create_appointment", create_body(at("10:00"), "+13")),  # Morning full: SLOT_FULL
        c(4, "create_appointment", create_body(at("17:30"), "+11")),  # same phone, same date: DUPLICATE
        c(5, "create_appointment", create_body(at("17:30", NEXT), "+11")),
        c(6, "cancel_appointment", {"cancellation_reason": "ill"}, "first"),
        c(7, "create_appointment", create_body(at("10:15"), "+14")),  # the cancelled place is taken again
        c(8, "create_appointment", {**create_body(at("18:00"), "+15"), "external_reference_id": "ext-1"}),
        c(9, "create_appointment", {**create_body(at("18:15"), "+16"), "external_reference_id": "ext-1"}),
        c(10, "update_appointment", {"appointment_date": at("18:30")}, "second"),  # moves out of Morning
        c(11, "create_appointment", create_body(at("11:00"), "+17")),  # into the place it left
        c(12, "update_appointment", {"notes": "x"}, "appt_nosuchone"),
        c(13, "create_appointment", {**create_body(at("17:45", NEXT), "+18"), "assigned_doctor": "Dr. Rao"}),
        c(14, "complete_appointment", {"diagnosis": "fine"}, "fifth"),
        c(15, "create_appointment", create_body("2020-01-01T09:30:00Z", "+19")),  # in the past
    ]


LABELS = {1: "first", 2: "second", 5: "fifth"}


async def one_by_one(handler: CommandHandler, org_id: str) -> list[tuple]:
    ids: dict[str, str] = {}
    out = []
    for n in range(1, len(script(org_id, ids)) + 1):
        command = script(org_id, ids)[n - 1]  # built again: labels resolve as answers come
        try:
            outcome = await commands.execute(handler, command, Meta(command_id=str(command.command_id)))
            out.append(summary(outcome.status, outcome.data))
            if n in LABELS:
                ids[LABELS[n]] = outcome.data["appointment_id"]
        except DomainError as exc:
            out.append(summary(exc.status, code=exc.code))
    return out


async def set_wise(handler: CommandHandler, org_id: str) -> tuple[list[tuple], list[Item]]:
    """Labelled appointments are created first (one run), then the whole script runs set-wise in one go."""
    ids: dict[str, str] = {}
    first = [Item(c) for c in script(org_id, ids)[:5]]

    async def careful(item: Item) -> None:
        try:
            outcome = await commands.execute(handler, item.command, Meta(command_id=str(item.command.command_id)))
            item.answer = summary(outcome.status, outcome.data)
        except DomainError as exc:
            item.answer = summary(exc.status, code=exc.code)

    def settle(item: Item, decided: Decided) -> None:
        item.answer = summary(decided.refusal.status, code=decided.refusal.code) if decided.refusal else \
            summary(decided.outcome.status, decided.outcome.data)
        item.decided = decided

    bulk = BulkDecider(handler)
    await bulk.run(first, careful, settle)
    for n, label in LABELS.items():
        ids[label] = first[n - 1].decided.outcome.data["appointment_id"]
    rest = [Item(c) for c in script(org_id, ids)[5:]]
    await bulk.run(rest, careful, settle)
    items = first + rest
    return [item.answer for item in items], items


async def bookings(pool, org_id: str) -> list[tuple]:
    async with pool.acquire() as conn:
        return [tuple(r) for r in await conn.fetch(
            "SELECT a.date, a.record->>'session', a.record->>'parent_phone', a.status,"
            " b.appointment_id IS NOT NULL AS counted FROM rm_appointments a"
            " LEFT JOIN rm_schedule_bookings b USING (appointment_id) WHERE a.org_id = $1 ORDER BY 1, 2, 3",
            uuid.UUID(org_id))]


async def test_set_wise_decisions_answer_as_one_by_one(pool, store):
    by_one = CommandHandler(pool, store)
    reference_org = await clinic(by_one)
    expected = await one_by_one(by_one, reference_org)
    handler = CommandHandler(pool, store)
    org_id = await clinic(handler)
    got, items = await set_wise(handler, org_id)
    assert got == expected
    codes = {a[1] for a in expected if len(a) == 2}
    assert codes == {"SLOT_FULL", "DUPLICATE_BOOKING", "NOT_FOUND", "PAST_APPOINTMENT"}, expected
    assert expected[6][0] == 201 and expected[10][0] == 201  # freed places taken again within the batch
    assert expected[8][0] == 200  # the repeated external reference answered idempotently
    assert items[12].decided is None  # the doctor's create took the careful path, in its turn
    assert sum(i.decided is not None for i in items) == len(items) - 1
    # Refusals are kept without their tracebacks, which would hold the run that holds them (a cycle that only
    # the cycle collector frees, late and at a cost).
    refusals = [i.decided.refusal for i in items if i.decided is not None and i.decided.refusal is not None]
    assert refusals and all(r.__traceback__ is None for r in refusals)
    # The read models agree with the one-by-one org's, row for row.
    assert await bookings(pool, org_id) == await bookings(pool, reference_org)

    # Every effect is in the log with its result, at the position answered, and reads back as it was answered:
    # a booking's and a reschedule's record from their events, which hold it (not stored twice), others as stored.
    async with pool.acquire() as conn:
        results = await recall(conn, [i.command.command_id for i in items])
        in_event = dict(await conn.fetch("SELECT command_id, data_in_event FROM command_results"
                                         " WHERE command_id = ANY($1::uuid[])", [i.command.command_id for i in items]))
    for item in items:
        if item.decided is not None and item.decided.outcome is not None and item.decided.outcome.position:
            outcome, stored = item.decided.outcome, results[item.command.command_id]
            assert stored["position"] == outcome.position == stored["data"]["position"]
            assert stored == CommandResult.ok_body(item.command.command_id, outcome.status, outcome.data,
                                                   outcome.position)
    # bookings (1, 7) and the reschedule (10) ride on events holding the record; the cancel (6) and the
    # completion (14) are stored whole
    assert [in_event[items[n - 1].command.command_id] for n in (1, 7, 10, 6, 14)] == [True] * 3 + [False] * 2


async def test_consumers_reading_a_window_day_another_process_moved_never_overbook_it(pool, store):
    """Two processes book one window-day; this one's cached copy fell behind the log. Its consumers read the
    day at the same moment to plan their batches, outside the day's lock. Neither may catch the shared
    cached copy up: both would fold the same missing events into it, and it would claim a version whose
    bookings it does not all hold. Once the log reached that version, a decision on the copy would pass the
    append's version check and book past capacity."""
    here, there = CommandHandler(pool, store), CommandHandler(pool, store)
    org_id = await clinic(here, max_slots=10)
    numbers, phones = itertools.count(1), (f"+1415555{n:04d}" for n in itertools.count())
    creates = lambda n: [Item(envelope(org_id, next(numbers), "create_appointment",  # noqa: E731
                                       create_body(at("09:30"), next(phones)))) for _ in range(n)]

    async def careful(item: Item) -> None:
        try:
            outcome = await commands.execute(here, item.command, Meta(command_id=str(item.command.command_id)))
            item.answer = (outcome.status,)
        except DomainError as exc:
            item.answer = (exc.status, exc.code)

    def settle(item: Item, decided: Decided) -> None:
        item.answer = (decided.refusal.status, decided.refusal.code) if decided.refusal else (decided.outcome.status,)

    async def there_books(n: int) -> None:
        for _ in range(n):
            await there.create_appointment(org_id, create_body(at("09:30"), next(phones)), Meta())

    bulk = BulkDecider(here)
    await bulk.run(creates(1), careful, settle)  # here caches the day: version 1
    await there_books(3)  # the log: version 4

    async def plan(item: Item) -> None:  # what each consumer reads before it takes the day's lock
        async with pool.acquire() as conn:
            await read(here.uow, here.clock(), conn, [item.command])

    # Were they to read the log's events, both consumers would be held there (the table locked meanwhile)
    # until both had asked for the same missing events: the moment the race needs, every time.
    async with pool.acquire() as blocker:
        async with blocker.transaction():
            await blocker.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
            planning = asyncio.gather(*(plan(item) for item in creates(2)))
            async with asyncio.timeout(30):  # one held and the other not would wait forever: fail instead
                while not planning.done() and await blocker.fetchval(
                        "SELECT count(*) FROM pg_locks WHERE relation = 'events'::regclass AND NOT granted") < 2:
                    await asyncio.sleep(0.01)
    await planning
    async with pool.acquire() as conn:
        stream = await conn.fetchval("SELECT stream_id FROM events WHERE org_id = $1 AND stream_id LIKE 'wd-%'"
                                     " LIMIT 1", uuid.UUID(org_id))
    cached = here.uow.cached_day(stream)
    if cached is not None:  # whatever is cached holds exactly the log's bookings up to its version
        async with pool.acquire() as conn:
            logged = await conn.fetchval("SELECT count(*) FROM events WHERE stream_id = $1 AND stream_version <= $2"
                                         " AND event_type = 'appointment.booked'", stream, cached.version)
        assert len(cached.appointments) == logged == cached.version

    await there_books(3)  # the log: version 7, 7 of 10 places taken
    rest = creates(10)
    await bulk.run(rest, careful, settle)
    assert Counter(item.answer for item in rest) == {(201,): 3, (409, "SLOT_FULL"): 7}
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM events WHERE org_id = $1 AND event_type ="
                                   " 'appointment.booked'", uuid.UUID(org_id)) == 10
