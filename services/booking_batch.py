"""Creates committed together (group commit): the fast path of POST /v1/appointments.

Creates for one org that arrive while its commits are in flight queue; when one finishes, the first create
in the queue leads the whole queue: under the locks of every window-day it touches, it decides each create
in arrival order against its window-day (each sees the ones before it, on its day and, for the duplicate
rule, on the others), commits all the bookings in one statement (with their write-side rows, read-model
rows and Kafka results), then answers everyone. When many creates wait at once, a durable commit and a
round trip are paid per group rather than per create; a lone create goes at once. Nothing about the
decisions changes: the same domain function decides each create in the same order.

The window-days are the cached ones (the append's expected versions check them); a lost race evicts them
and the group is decided once more from the log, its duplicate keys read first. A create the group cannot
settle (it lost twice, or its configuration moved) is answered None, and the handler takes the careful path
for it.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import functools
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable

import asyncpg
from prometheus_client import Counter, Histogram

from domain import catalog as cat
from domain import decisions
from domain import windowday as wd
from domain.errors import DomainError
from domain.patients import phone_key
from services.command_results import CommandAlreadyApplied, pending
from services.logs import log
from services.outcome import Meta, Outcome, written
from services.store.pool import DATABASE_UNAVAILABLE
from services.unit_of_work import Change, Conflict, UnitOfWork, Work

MAX_BATCH = 200
# Groups are decided on the cached window-days as they are (no round trip to check them) while that keeps
# working. Once it does not (another process writes the same window-days) they are checked first, one query,
# until this many groups in a row find the cache current.
TRUST_AFTER = 50
GROUPS_IN_FLIGHT = 2  # per org and process: one commits while the next is decided
BATCH_SIZE = Histogram("slotledger_booking_group_size", "Creates decided and committed together",
                       buckets=(1, 2, 5, 10, 20, 50, 100, 200))
LOST_RACES = Counter("slotledger_booking_group_lost_races_total",
                     "Groups of creates whose commit lost a race with another process, decided again")

Key = tuple[str, str, str]  # phone (as compared), service, local date: the duplicate rule within one org

def booked_key(org: str, day: str) -> str:
    """SQL for the booking holding the key in row `k` (k.phone, k.service_id, `day`) of org `org`, looked up per
    key: a correlated subquery is always a probe of the primary key, where a join may be planned as a scan of
    the org's every key while the table's statistics are young."""
    return (f"(SELECT b.appointment_id FROM booking_keys b WHERE b.org_id = {org} AND b.phone = k.phone"
            f" AND b.service_id = k.service_id AND b.local_date = {day})")


BOOKED_KEY = booked_key("$1", "k.local_date")  # the org is the statement's first parameter


@dataclass
class _Create:
    request: dict[str, Any]
    catalog: cat.Catalog
    version: int  # the configuration version it was planned on
    placement: wd.Placement
    meta: Meta
    answer: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    @functools.cached_property
    def key(self) -> Key | None:
        if not self.catalog.settings.prevent_duplicate_bookings:
            return None
        return (phone_key(self.request["parent_phone"], self.catalog.settings.phone_region),
                self.placement.service.service_id, self.placement.local_date.isoformat())


@dataclass
class BookingBatcher:
    uow: UnitOfWork
    clock: Callable[[], datetime]
    new_id: Callable[[], str]
    queues: dict[str, list[_Create]] = field(default_factory=dict)  # creates waiting, per org
    leading: dict[str, int] = field(default_factory=dict)  # groups in flight, per org
    trusting: int = TRUST_AFTER  # groups in a row that found the cached window-days current
    _groups: set[asyncio.Task] = field(default_factory=set)

    async def submit(self, org_id: str, catalog: cat.Catalog, version: int, placement: wd.Placement,
                     request: dict[str, Any], meta: Meta) -> Outcome | None:
        me = _Create(request, catalog, version, placement, meta)
        self.queues.setdefault(org_id, []).append(me)
        if self.leading.get(org_id, 0) < GROUPS_IN_FLIGHT:
            self.leading[org_id] = self.leading.get(org_id, 0) + 1
            self._start(org_id)
        answer = await me.answer
        if isinstance(answer, Exception):  # a refusal, or the database is not there
            raise answer
        return answer

    def _start(self, org_id: str) -> None:
        """The next group, in its own task: a caller that leaves does not take its group's commit with it."""
        queue = self.queues.pop(org_id, [])
        group = [c for c in queue[:MAX_BATCH] if not c.answer.done()]  # a caller gone is not decided
        if queue[MAX_BATCH:]:
            self.queues[org_id] = queue[MAX_BATCH:]
        task = asyncio.create_task(self._lead(org_id, group))
        self._groups.add(task)
        task.add_done_callback(self._groups.discard)

    async def _lead(self, org_id: str, group: list[_Create]) -> None:
        answers: list[Any] = [None] * len(group)
        try:
            if group:
                BATCH_SIZE.observe(len(group))
                answers = await self._decide_and_commit(org_id, group)
        except DATABASE_UNAVAILABLE as exc:  # everyone is told at once (503), not after a careful try each,
            group += self.queues.pop(org_id, [])  # and so is everyone queued behind: they would wait in vain
            answers = [exc] * len(group)
        except Exception:  # a bug: each takes the careful path, which sets the culprit apart
            log.exception("a group of creates failed; each is decided alone")
        finally:
            for create, answer in zip(group, answers):
                if not create.answer.done():
                    create.answer.set_result(answer)  # None: the careful path answers it
            if self.queues.get(org_id):
                self._start(org_id)
            else:
                self.leading[org_id] -= 1
                if not self.leading[org_id]:
                    del self.leading[org_id]

    async def _decide_and_commit(self, org_id: str, group: list[_Create]) -> list[Any]:
        leader = group[0]
        answers: list[Any] = [None] * len(group)
        # A create planned on another configuration version than the leader's takes the careful path.
        mine = [i for i, c in enumerate(group) if c.version == leader.version]
        streams = sorted({group[i].placement.stream_id for i in mine})
        async with self.uow.pool.acquire() as conn, self.uow.locks(streams):
            for verify in ((False, True) if self.trusting >= TRUST_AFTER else (True, True)):
                try:
                    decided = await self._attempt(conn, org_id, leader.catalog, leader.version,
                                                  [group[i] for i in mine], streams, verify)
                except (Conflict, CommandAlreadyApplied):
                    LOST_RACES.inc()
                    self.trusting = 0
                    continue  # evicted: decided once more from the log; then each alone, carefully
                for i, answer in zip(mine, decided):
                    answers[i] = answer
                break
        return answers

    async def _attempt(self, conn: asyncpg.Connection, org_id: str, catalog: cat.Catalog, version: int,
                       group: list[_Create], streams: list[str], verify: bool) -> list[Any]:
        if not verify:
            return await self._decide(conn, org_id, catalog, version, group, streams, verify)
        # Another process writes these window-days too: hold their rows (in order, so two groups never wait on
        # each other) while deciding, so the group is decided on what the log holds and its commit cannot lose
        # the race, where deciding and losing would cost a whole group's work (with two workers, most groups).
        try:
            async with conn.transaction():
                answers = await self._decide(conn, org_id, catalog, version, group, streams, verify)
        except BaseException:  # rolled back: the bookings folded into the cached days never happened
            self.uow.evict(*streams)
            raise
        self.uow.store.announce()  # committed only now: wake the log's readers again
        return answers

    async def _decide(self, conn: asyncpg.Connection, org_id: str, catalog: cat.Catalog, version: int,
                      group: list[_Create], streams: list[str], verify: bool) -> list[Any]:
        cached = {s: day.version for s in streams if verify and (day := self.uow.cached_day(s)) is not None}
        days = await self.uow.days(conn, {s: catalog for s in streams}, verify, hold=verify)
        if verify:  # the cache is trusted again once verifying finds it current, time after time
            behind = any(days[s].version > v for s, v in cached.items())
            self.trusting = 0 if behind else self.trusting + 1
        taken: dict[Key, str] = await _booked(conn, org_id, group) if verify else {}
        now = self.clock()
        answers: list[Any] = [None] * len(group)
        refused: list[int] = []
        changes: dict[str, Change] = {}
        touched, results, booked = [], [], []
        try:
            for i, create in enumerate(group):
                day, key = days[create.placement.stream_id], create.key
                appointment_id = self.new_id()
                try:
                    events = decisions.decide_create(catalog, day, create.placement, create.request, appointment_id,
                                                     now, taken.get(key) if key else None)
                except DomainError as exc:
                    answers[i] = exc.kept()
                    refused.append(i)
                    continue
                for event in events:  # folded at once: the next create is decided against it
                    day.apply(event)
                change = changes.setdefault(day.stream_id, Change(day.stream_id, day.version - len(events), [], []))
                change.events += events
                change.metas += [create.meta] * len(events)
                if key:
                    taken[key] = appointment_id
                record = day.appointments[appointment_id]
                touched.append((None, record))
                answers[i] = written(201, record.as_dict(), None)
                booked.append((i, day.stream_id, day.version))
                result = pending(create.meta, answers[i], day.version, events[-1])
                if result is not None:
                    results.append((day.stream_id, result))
            if changes:
                stored = await self.uow.commit(conn, Work(org_id, catalog, version, list(changes.values()), touched,
                                                          results))
                positions = {(e.stream_id, e.stream_version): e.position for e in stored}
                for i, stream, stream_version in booked:
                    answers[i].position = answers[i].data["position"] = positions[(stream, stream_version)]
        except BaseException:
            self.uow.evict(*changes)
            raise
        if refused:  # what was booked is answered as booked, whatever happens to the refusals' confirmation
            try:
                await _confirm_refusals(conn, org_id, catalog, version, days, group, refused, answers, now)
            except DATABASE_UNAVAILABLE:
                for i in refused:
                    answers[i] = None
        return answers


async def _booked(conn: asyncpg.Connection, org_id: str, group: list[_Create]) -> dict[Key, str]:
    """The group's duplicate keys already booked, by appointment."""
    keys = [k for k in {c.key for c in group} if k is not None]
    if not keys:
        return {}
    rows = await conn.fetch(
        f"SELECT k.phone, k.service_id, k.local_date::text AS day, {BOOKED_KEY} AS appointment_id"
        " FROM unnest($2::text[], $3::text[], $4::date[]) AS k(phone, service_id, local_date)",
        uuid.UUID(org_id), [k[0] for k in keys], [k[1] for k in keys], [dt.date.fromisoformat(k[2]) for k in keys])
    return {(r["phone"], r["service_id"], r["day"]): r["appointment_id"] for r in rows if r["appointment_id"]}


async def _confirm_refusals(conn: asyncpg.Connection, org_id: str, catalog: cat.Catalog, version: int,
                            days: dict[str, wd.WindowDay], group: list[_Create], refused: list[int],
                            answers: list[Any], now: datetime) -> None:
    """A refusal stands once the configuration and the window-day it was decided on are confirmed current,
    and once rule 9 has had its say: a create refused SLOT_FULL whose phone already has a booking that date
    elsewhere is a DUPLICATE_BOOKING (rule 9 comes before rule 10). One query for the whole group; a refusal
    that cannot be confirmed is left None, and the careful path answers it."""
    keys = [group[i].key for i in refused]
    asked = [k for k in keys if k is not None]
    stale_days = sorted({group[i].placement.stream_id for i in refused})
    row = await conn.fetchrow(
        "SELECT (SELECT config_version FROM orgs WHERE org_id = $1) AS version, array(SELECT array[phone,"
        " service_id, local_date::text, appointment_id] FROM (SELECT k.*, " + BOOKED_KEY + " AS appointment_id"
        " FROM unnest($2::text[], $3::text[], $4::date[]) AS k(phone, service_id, local_date)) AS b"
        " WHERE appointment_id IS NOT NULL) AS taken, array(SELECT array[s.stream_id, s.version::text]"
        " FROM streams s WHERE s.stream_id = ANY($5::text[])) AS versions",
        uuid.UUID(org_id), [k[0] for k in asked], [k[1] for k in asked], [dt.date.fromisoformat(k[2]) for k in asked],
        stale_days)
    current = {stream: int(v) for stream, v in row["versions"]}
    taken = {(phone, service, day): appointment_id for phone, service, day, appointment_id in row["taken"]}
    for i, key in zip(refused, keys):
        exc, create = answers[i], group[i]
        day = days[create.placement.stream_id]
        if row["version"] != version or current.get(day.stream_id, 0) != day.version:
            answers[i] = None  # decided on stale configuration or a stale day
            continue
        if exc.code == "SLOT_FULL" and key is not None and key in taken:
            try:
                decisions.decide_create(catalog, day, create.placement, create.request, "appt_unused0", now,
                                        taken[key])
            except DomainError as decided:
                answers[i] = decided.kept()
