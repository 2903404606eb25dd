"""Creates for one window-day decided and committed together.

When creates for the same window-day arrive while one is being written, they queue; the first in the queue
leads: under the stream's lock it decides every queued create in arrival order against the window-day (each
sees the ones before it), commits all the bookings in one statement (with their write-side rows, read-model
rows and Kafka results), then answers everyone. A hot window-day then costs one round trip per batch instead
of one per create. Nothing about the decisions changes: the same domain function decides each create in the
same order.

A create that the batch cannot settle (its statement failed, or the config moved) is answered None, and the
handler takes the careful path for it.
"""
from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable

import asyncpg
from prometheus_client import Histogram

from domain import catalog as cat
from domain import decisions
from domain import windowday as wd
from domain.patients import phone_key
from domain.errors import DomainError
from services.command_results import CommandAlreadyApplied, pending
from services.outcome import Meta, Outcome, written
from services.unit_of_work import Change, Conflict, UnitOfWork, Work

MAX_BATCH = 200
BATCH_SIZE = Histogram("slotledger_window_day_batch_size", "Creates decided together for one window-day",
                       buckets=(1, 2, 5, 10, 20, 50, 100, 200))


@dataclass
class _Create:
    request: dict[str, Any]
    placement: wd.Placement  # its own: the same window-day as the others, but its own time and service
    meta: Meta
    answer: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


_LEAD = object()  # the answer that hands the lead to a waiting create


@dataclass
class BookingBatcher:
    uow: UnitOfWork
    clock: Callable[[], datetime]
    new_id: Callable[[], str]
    queues: dict[str, list[_Create]] = field(default_factory=dict)  # creates waiting, per window-day

    async def submit(self, conn: asyncpg.Connection, org_id: str, catalog: cat.Catalog, version: int,
                     placement: wd.Placement, request: dict[str, Any], meta: Meta) -> Outcome | None:
        stream = placement.stream_id
        me = _Create(request, placement, meta)
        queue = self.queues.setdefault(stream, [])
        queue.append(me)
        if len(queue) > 1:  # the first in the queue leads; wait for its answer, or for the lead
            answer = await me.answer
            if answer is not _LEAD:
                return _unwrap(answer)
        batch: list[_Create] = []
        try:
            async with self.uow.lock(stream):
                # A create whose caller has gone (its task was cancelled, and with it the future) is not decided.
                queued = [c for c in self.queues.pop(stream) if c is me or not c.answer.done()]
                batch, rest = queued[:MAX_BATCH], queued[MAX_BATCH:]
                if rest:  # too many for one statement: the next in line leads the rest
                    self.queues[stream] = rest
                    rest[0].answer.set_result(_LEAD)
                BATCH_SIZE.observe(len(batch))
                answers = await self._decide_and_commit(conn, org_id, catalog, version, placement, batch)
        except BaseException:
            for create in batch or self.queues.pop(stream, []):
                if create is not me and not create.answer.done():
                    create.answer.set_result(None)  # the careful path answers them
            raise
        for create, answer in zip(batch, answers):
            if create is not me and not create.answer.done():
                create.answer.set_result(answer)
        return _unwrap(answers[0])

    async def _decide_and_commit(self, conn: asyncpg.Connection, org_id: str, catalog: cat.Catalog, version: int,
                                 placement: wd.Placement, batch: list[_Create]) -> list[Any]:
        day = await self.uow.day(placement.stream_id, conn, catalog)
        expected = day.version
        now = self.clock()
        answers: list[Any] = [None] * len(batch)
        refused: list[tuple[int, DomainError]] = []
        change = Change(day.stream_id, expected, [], [])
        touched, results = [], []
        for i, create in enumerate(batch):
            appointment_id = self.new_id()
            try:
                events = decisions.decide_create(catalog, day, create.placement, create.request, appointment_id, now)
            except DomainError as exc:
                refused.append((i, exc))
                continue
            for event in events:  # folded at once: the next create is decided against it
                day.apply(event)
            change.events += events
            change.metas += [create.meta] * len(events)
            record = day.appointments[appointment_id]
            touched.append((None, record))
            answers[i] = written(201, record.as_dict(), None)
            result = pending(create.meta, answers[i], day.version)
            if result is not None:
                results.append((day.stream_id, result))
        try:
            if change.events:
                stored = await self.uow.commit(conn, Work(org_id, catalog, version, [change], touched, results))
                for answer, event in zip((a for a in answers if a is not None), stored):
                    answer.position = answer.data["position"] = event.position
            await _settle_refusals(conn, org_id, catalog, version, placement, day, batch, refused, answers, now)
        except (Conflict, CommandAlreadyApplied):
            return [None] * len(batch)  # each takes the careful path, which tells them apart
        except BaseException:
            self.uow.evict(day.stream_id)
            raise
        return answers


def _unwrap(answer: Any) -> Outcome | None:
    if isinstance(answer, DomainError):
        raise answer
    return answer


async def _settle_refusals(conn: asyncpg.Connection, org_id: str, catalog: cat.Catalog, version: int,
                           placement: wd.Placement, day: wd.WindowDay, batch: list[_Create],
                           refused: list[tuple[int, DomainError]], answers: list[Any], now: datetime) -> None:
    """A refusal stands once the configuration it was decided on is confirmed current, and once rule 9 has
    had its say: a create refused SLOT_FULL whose phone already has a booking that date elsewhere is a
    DUPLICATE_BOOKING (rule 9 comes before rule 10). One query for the whole batch."""
    if not refused:
        return
    keys = [(phone_key(batch[i].request["parent_phone"], catalog.settings.phone_region),
             batch[i].placement.service.service_id)
            for i, _ in refused]
    row = await conn.fetchrow(
        "SELECT (SELECT config_version FROM orgs WHERE org_id = $1) AS version, array(SELECT array[b.phone,"
        " b.service_id, b.appointment_id] FROM booking_keys b JOIN unnest($3::text[], $4::text[]) AS k(phone,"
        " service_id) USING (phone, service_id) WHERE b.org_id = $1 AND b.local_date = $2) AS taken,"
        " (SELECT s.version FROM streams s WHERE s.stream_id = $5) AS day_version",
        uuid.UUID(org_id), placement.local_date, [p for p, _ in keys], [s for _, s in keys], day.stream_id)
    if row["version"] != version or (row["day_version"] or 0) != day.version:
        return  # decided on stale configuration or a stale day: left None, the careful path answers them
    taken = {(phone, service): appointment_id for phone, service, appointment_id in row["taken"]}
    for (i, exc), key in zip(refused, keys):
        if exc.code == "SLOT_FULL" and catalog.settings.prevent_duplicate_bookings and key in taken:
            try:
                decisions.decide_create(catalog, day, batch[i].placement, batch[i].request, "appt_unused0", now,
                                        taken[key])
            except DomainError as decided:
                exc = decided
        answers[i] = exc
