"""Two processes (two command handlers, each with its own caches) book the same few window-days at once: in
each, two Kafka consumers decide batches set-wise while HTTP creates are grouped, and cancellations and
moves between window-days free places that are taken again, or offered to patients waiting on both windows
of the date. Whatever the interleaving: the log never holds more active bookings on a
window-day than its capacity, at any version; every window-day either process has cached holds exactly the
log's events up to its version (the append's version check trusts that); and the read models agree."""
from __future__ import annotations

import asyncio
import itertools
import random
import uuid
from typing import Any

import pytest

from domain import events as ev
from domain import windowday as wd
from domain.errors import DomainError
from services import commands
from services.bulk import BulkDecider, Decided
from services.handler import CommandHandler
from services.outcome import Meta
from tests.builders import create_body
from tests.faults.invariants import violations
from tests.integration.test_bulk_decisions import DAY, NEXT, Item, envelope
from tests.integration.test_command_handler import at, clinic

CAPACITY = 5
ROUNDS = 12


async def _log_of(store, stream: str) -> list[ev.Event]:
    return [ev.from_stored(e.type, e.data) for e in await store.read_stream(stream)]


@pytest.mark.parametrize("seed", range(8))  # each a different interleaving, ~1 s each
async def test_two_processes_racing_on_window_days_never_overbook_nor_cache_what_the_log_does_not_hold(
        pool, store, seed):
    rng = random.Random(seed)
    handlers = [CommandHandler(pool, store), CommandHandler(pool, store)]
    org_id = await clinic(handlers[0], max_slots=CAPACITY)
    numbers, phones = itertools.count(1), (f"+1415666{n:04d}" for n in itertools.count())
    booked: list[str] = []  # appointment ids answered 201, for cancellations to pick from
    unexpected: list[BaseException] = []

    def some_create() -> dict[str, Any]:
        day, hhmm = rng.choice([DAY, NEXT]), rng.choice(["09:30", "10:00", "17:30", "18:00"])
        return create_body(at(hhmm, day), next(phones))

    def some_command() -> Any:
        """A create mostly; else a cancellation or a move to another window-day of one booked appointment."""
        roll = rng.random()
        if booked and roll < 0.25:
            return envelope(org_id, next(numbers), "cancel_appointment", {"cancellation_reason": "ill"},
                            rng.choice(booked))
        if booked and roll < 0.4:
            return envelope(org_id, next(numbers), "update_appointment",
                            {"appointment_date": some_create()["appointment_date"]}, rng.choice(booked))
        return envelope(org_id, next(numbers), "create_appointment", some_create())

    def noted(status: int, data: dict | None) -> None:
        if status == 201:
            booked.append(data["appointment_id"])

    async def consumer(handler: CommandHandler, bulk: BulkDecider) -> None:
        for _ in range(ROUNDS):
            batch = []
            for _ in range(rng.randint(1, 6)):
                batch.append(Item(some_command()))

            async def careful(item: Item) -> None:
                try:
                    outcome = await commands.execute(handler, item.command,
                                                     Meta(command_id=str(item.command.command_id)))
                    noted(outcome.status, outcome.data)
                except DomainError:
                    pass

            def settle(item: Item, decided: Decided) -> None:
                if decided.outcome is not None:
                    noted(decided.outcome.status, decided.outcome.data)

            try:
                await bulk.run(batch, careful, settle)
            except BaseException as exc:  # noqa: BLE001 - reported below, with the others
                unexpected.append(exc)
            await asyncio.sleep(rng.random() * 0.005)

    async def over_http(handler: CommandHandler) -> None:
        for _ in range(ROUNDS):
            async def one() -> None:  # as the gateway would: no command_id, so no result stored
                try:
                    if rng.random() < 0.15:  # waiting on both windows of a date: a freed place is offered
                        await handler.join_waitlist(org_id, {  # on one of them, and it leaves the other's queue
                            "appointment_type": "General Checkup", "date": rng.choice([DAY, NEXT]),
                            "patient_name": "Waiting", "parent_phone": next(phones)}, Meta())
                        return
                    outcome = await commands.execute(handler, some_command(), Meta())
                    noted(outcome.status, outcome.data)
                except DomainError:
                    pass
                except BaseException as exc:  # noqa: BLE001
                    unexpected.append(exc)

            await asyncio.gather(*(one() for _ in range(rng.randint(1, 6))))  # several at once: grouped
            await asyncio.sleep(rng.random() * 0.005)

    await asyncio.gather(*(task for h in handlers for task in
                           (consumer(h, BulkDecider(h)), consumer(h, BulkDecider(h)), over_http(h))))
    assert not unexpected, unexpected
    assert len(booked) > 2 * CAPACITY  # places were freed and taken again

    async with pool.acquire() as conn:
        streams = [r["stream_id"] for r in await conn.fetch(
            "SELECT stream_id FROM streams WHERE org_id = $1 AND stream_id LIKE 'wd-%'", uuid.UUID(org_id))]
        assert len(streams) == 4
        logs = {stream: await _log_of(store, stream) for stream in streams}
        broken = await violations(conn, CAPACITY)
        kinds = dict(await conn.fetch("SELECT event_type, count(*) FROM events WHERE org_id = $1 GROUP BY 1",
                                      uuid.UUID(org_id)))
    assert not any(broken.values()), broken
    assert kinds["appointment.status_changed"] and kinds["waitlist.offered"], kinds  # places freed and offered
    for stream, events in logs.items():
        day = wd.WindowDay(*wd.split_stream_id(stream))
        for event in events:
            day.apply(event)
            assert sum(a.active for a in day.appointments.values()) <= CAPACITY, (stream, day.version)
    for handler in handlers:
        for stream in streams:
            cached = handler.uow.cached_day(stream)
            if cached is None:
                continue
            truth = wd.WindowDay(*wd.split_stream_id(stream))
            truth.fold(logs[stream][:cached.version])
            assert cached.version <= len(logs[stream])
            assert (cached.appointments, cached.holds, cached.waiting) == \
                (truth.appointments, truth.holds, truth.waiting), stream


async def test_an_answer_never_shows_a_decision_whose_commit_is_still_in_flight(pool, store):
    """A consumer's cancellation is decided and folded into the cached window-day, and its commit waits (the
    stream's row is locked meanwhile). A create repeating the appointment's external reference, answered
    from the write side, must show the appointment as the log has it: were the commit to fail, the caller
    would have been shown a cancellation that never happened."""
    handler = CommandHandler(pool, store)
    org_id = await clinic(handler, max_slots=CAPACITY)
    body = {**create_body(at("09:30"), "+14156660001"), "external_reference_id": "ref-1"}
    booked = await handler.create_appointment(org_id, body, Meta())
    stream = wd.stream_id(booked.data["window_id"], booked.data["date"])
    cancelled: list[Decided] = []

    async def careful(item: Item) -> None:
        raise AssertionError("decided set-wise")

    async with pool.acquire() as blocker:
        async with blocker.transaction():
            await blocker.execute("SELECT version FROM streams WHERE stream_id = $1 FOR UPDATE", stream)
            cancelling = asyncio.create_task(BulkDecider(handler).run(
                [Item(envelope(org_id, 1, "cancel_appointment", {"cancellation_reason": "ill"},
                              booked.data["appointment_id"]))], careful, lambda item, d: cancelled.append(d)))
            async with asyncio.timeout(30):
                while not await blocker.fetchval(  # someone waits for this transaction: the consumer's commit
                        "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'transactionid'"
                        " AND transactionid::text::bigint = pg_current_xact_id()::text::bigint % 4294967296"):
                    await asyncio.sleep(0.01)
            assert handler.uow.cached_day(stream).appointments[booked.data["appointment_id"]].status == "cancelled"
            replay = await handler.create_appointment(org_id, body, Meta())
            assert (replay.status, replay.data["status"]) == (200, booked.data["status"]) != (200, "cancelled")
    await cancelling
    assert cancelled[0].outcome.data["status"] == "cancelled"
