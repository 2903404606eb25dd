"""Creates for one window-day decided and appended together.

When creates for the same window-day arrive while one is being written, they queue; the first in the queue
leads: under the stream's lock it decides every queued create in arrival order against the window-day (each
sees the ones before it), appends all the bookings in one statement with their write-side rows (and Kafka
results), then answers everyone. A hot window-day then costs one round trip per batch instead of one per
create. Nothing about the decisions changes: the same domain function decides each create in the same order.

A create that the batch cannot settle (its statement failed, or the config moved) is answered None, and the
handler takes the careful path for it.
"""
from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import asyncpg
from prometheus_client import Histogram

from domain import catalog as cat
from domain import windowday as wd
from domain.errors import DomainError
from schemas.kafka import CommandResult
from services.store.eventstore import GUARD, Append, ConcurrencyError, NewEvent, SideWrite

if TYPE_CHECKING:
    from services.handler import CommandHandler, Meta, Outcome

MAX_BATCH = 200
BATCH_SIZE = Histogram("slotledger_window_day_batch_size", "Creates decided together for one window-day",
                       buckets=(1, 2, 5, 10, 20, 50, 100, 200))


@dataclass
class _Create:
    request: dict[str, Any]
    placement: wd.Placement  # its own: the same window-day as the others, but its own time and service
    meta: "Meta"
    answer: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


_LEAD = object()  # the answer that hands the lead to a waiting create


async def submit(handler: "CommandHandler", conn: asyncpg.Connection, org_id: str, catalog: cat.Catalog,
                 version: int, placement: wd.Placement, request: dict[str, Any], meta: "Meta") -> "Outcome | None":
    stream = placement.stream_id
    me = _Create(request, placement, meta)
    queue = handler._queues.setdefault(stream, [])
    queue.append(me)
    if len(queue) > 1:  # the first in the queue leads; wait for its answer, or for the lead
        answer = await me.answer
        if answer is not _LEAD:
            return _unwrap(answer)
    batch: list[_Create] = []
    try:
        async with handler._lock(stream):
            # A create whose caller has gone (its task was cancelled, and with it the future) is not decided.
            queued = [c for c in handler._queues.pop(stream) if c is me or not c.answer.done()]
            batch, rest = queued[:MAX_BATCH], queued[MAX_BATCH:]
            if rest:  # too many for one statement: the next in line leads the rest
                handler._queues[stream] = rest
                rest[0].answer.set_result(_LEAD)
            BATCH_SIZE.observe(len(batch))
            answers = await _decide_and_append(handler, conn, org_id, catalog, version, placement, batch)
    except BaseException:
        for create in batch or handler._queues.pop(stream, []):
            if create is not me and not create.answer.done():
                create.answer.set_result(None)  # the careful path answers them
        raise
    for create, answer in zip(batch, answers):
        if create is not me and not create.answer.done():
            create.answer.set_result(answer)
    return _unwrap(answers[0])


def _unwrap(answer: Any) -> "Outcome | None":
    if isinstance(answer, DomainError):
        raise answer
    return answer


async def _decide_and_append(handler: "CommandHandler", conn: asyncpg.Connection, org_id: str,
                             catalog: cat.Catalog, version: int, placement: wd.Placement,
                             batch: list[_Create]) -> list[Any]:
    from services.handler import new_appointment_id, written  # (the handler imports this module)

    day = await handler._day(placement.stream_id, placement.window.window_id, placement.local_date.isoformat(), conn)
    expected = day.version
    now = handler.clock()
    answers: list[Any] = [None] * len(batch)
    accepted: list[tuple[int, str]] = []
    refused: list[tuple[int, DomainError]] = []
    events: list[NewEvent] = []
    for i, create in enumerate(batch):
        appointment_id = new_appointment_id()
        try:
            decided = wd.book(catalog, day, create.placement, create.request, appointment_id, now)
        except DomainError as exc:
            refused.append((i, exc))
            continue
        for event in decided:
            day.apply(event)
            events.append(NewEvent(event.type, event.data(), schema_version=event.version,
                                   metadata=create.meta.as_dict()))
        accepted.append((i, appointment_id))
    try:
        if events:
            stored = await handler.store.append([_append(org_id, catalog, version, placement, day, expected, events,
                                                         [(batch[i], a) for i, a in accepted])], conn)
            for (i, appointment_id), event in zip(accepted, stored):
                answers[i] = written(201, day.appointments[appointment_id], event.position)
            handler.store.announce()
        await _settle_refusals(conn, org_id, catalog, version, placement, day, batch, refused, answers, now)
    except (ConcurrencyError, asyncpg.UniqueViolationError):
        handler._forget(day.stream_id)
        return [None] * len(batch)  # each takes the careful path
    except BaseException:
        handler._forget(day.stream_id)
        raise
    return answers


def _append(org_id: str, catalog: cat.Catalog, version: int, placement: wd.Placement, day: wd.WindowDay,
            expected: int, events: list[NewEvent], accepted: list[tuple[_Create, str]]) -> Append:
    org = uuid.UUID(org_id)
    ids = [appointment_id for _, appointment_id in accepted]
    side = [SideWrite(f"INSERT INTO appointment_streams SELECT unnest($1::text[]), $2::uuid, $3::text WHERE {GUARD}",
                      (ids, org, day.stream_id))]
    if catalog.settings.prevent_duplicate_bookings:
        side.append(SideWrite(
            "INSERT INTO booking_keys SELECT $1::uuid, k.phone, k.service_id, $4::date, k.appointment_id"
            " FROM unnest($2::text[], $3::text[], $5::text[]) AS k(phone, service_id, appointment_id)"
            f" WHERE {GUARD}", (org, [wd.normalise_phone(c.request["parent_phone"]) for c, _ in accepted],
                                [c.placement.service.service_id for c, _ in accepted], placement.local_date, ids)))
    kafka = [(c.meta.command_id,
              CommandResult.of(c.meta.command_id, 201, {**day.appointments[a], "position": None}, None).as_json(),
              expected + n + 1)  # each booking is one event
             for n, (c, a) in enumerate(accepted) if c.meta.command_id is not None]
    if kafka:
        from services.handler import results_write

        side.append(results_write(org, kafka))
    condition = SideWrite("EXISTS (SELECT 1 FROM orgs WHERE org_id = $1::uuid AND config_version = $2::bigint)",
                          (org, version))
    return Append(day.stream_id, expected, events, org_id=org, side_writes=side, condition=condition)


async def _settle_refusals(conn: asyncpg.Connection, org_id: str, catalog: cat.Catalog, version: int,
                           placement: wd.Placement, day: wd.WindowDay, batch: list[_Create],
                           refused: list[tuple[int, DomainError]], answers: list[Any], now) -> None:
    """A refusal stands once the configuration it was decided on is confirmed current, and once rule 9 has
    had its say: a create refused SLOT_FULL whose phone already has a booking that date elsewhere is a
    DUPLICATE_BOOKING (rule 9 comes before rule 10). One query for the whole batch."""
    if not refused:
        return
    keys = [(wd.normalise_phone(batch[i].request["parent_phone"]), batch[i].placement.service.service_id)
            for i, _ in refused]
    row = await conn.fetchrow(
        "SELECT (SELECT config_version FROM orgs WHERE org_id = $1) AS version, array(SELECT array[b.phone,"
        " b.service_id, b.appointment_id] FROM booking_keys b JOIN unnest($3::text[], $4::text[]) AS k(phone,"
        " service_id) USING (phone, service_id) WHERE b.org_id = $1 AND b.local_date = $2) AS taken",
        uuid.UUID(org_id), placement.local_date, [p for p, _ in keys], [s for _, s in keys])
    if row["version"] != version:
        return  # left None: the careful path answers them
    taken = {(phone, service): appointment_id for phone, service, appointment_id in row["taken"]}
    for (i, exc), key in zip(refused, keys):
        if exc.code == "SLOT_FULL" and catalog.settings.prevent_duplicate_bookings and key in taken:
            try:
                wd.book(catalog, day, batch[i].placement, batch[i].request, "appt_unused0", now, taken[key])
            except DomainError as decided:
                exc = decided
        answers[i] = exc
