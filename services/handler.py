"""The command handler: load the aggregate(s), let the domain decide, append with expected versions.

Within one process, commands for one window-day queue on an asyncio lock, so they never conflict with each
other and the cached aggregate stays fresh; across processes the streams' expected versions and the unique
write-side tables catch every race, and the command is retried from the top (bounded).
"""
from __future__ import annotations

import asyncio
import copy
import random
import secrets
import string
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable

import asyncpg

from domain import catalog as cat
from domain import doctors
from domain import events as ev
from domain import windowday as wd
from domain.errors import DomainError, not_found
from domain.timerules import local, parse_day, parse_instant
from schemas.kafka import CommandResult
from services import booking_batch
from services.store.eventstore import GUARD, Append, ConcurrencyError, EventStore, NewEvent, SideWrite, StoredEvent

_ALPHABET = string.ascii_lowercase + string.digits


def new_appointment_id() -> str:
    return "appt_" + "".join(secrets.choice(_ALPHABET) for _ in range(10))


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Outcome:
    """What a command did: the HTTP-equivalent status, the record, and the log position of its last event."""
    status: int
    data: Any
    position: int | None = None
    idempotent: bool = False


@dataclass
class Meta:
    """Who asked and why: recorded on every event the command appends."""
    request_id: str | None = None
    command_id: str | None = None
    actor: str | None = None

    def as_dict(self) -> dict[str, str]:
        return {k: v for k, v in vars(self).items() if v is not None}


class _Retry(Exception):
    pass



class CommandAlreadyApplied(Exception):
    """Another delivery of this command_id committed first; nothing of this one was written."""

    def __init__(self, command_id: str):
        super().__init__(f"command {command_id} was already applied")
        self.command_id = command_id


def results_write(org_id: uuid.UUID, results: list[tuple[str, dict[str, Any], int]]) -> SideWrite:
    """Kafka command results (command_id, result, the stream version of the command's last event), stored in
    the append's own statement, each given its event's log position."""
    return SideWrite(
        "INSERT INTO command_results (command_id, org_id, result) SELECT c.id, $2::uuid, jsonb_set(jsonb_set("
        "c.result, '{position}', to_jsonb(i.global_position)), '{data,position}', to_jsonb(i.global_position))"
        " FROM unnest($1::uuid[], $3::jsonb[], $4::int[]) AS c(id, result, version)"
        " JOIN ins i ON i.stream_version = c.version",
        ([uuid.UUID(command_id) for command_id, _, _ in results], org_id, [r for _, r, _ in results],
         [version for _, _, version in results]))


def written(status: int, record: dict[str, Any], position: int | None, idempotent: bool = False) -> Outcome:
    """An appointment write's outcome: the record as it is now, with the log position of the write."""
    return Outcome(status, {**record, "position": position}, position, idempotent)


@dataclass
class CommandHandler:
    pool: asyncpg.Pool
    store: EventStore
    retries: int = 8
    clock: Callable[[], datetime] = utcnow
    cache_size: int = 20_000
    _catalogs: dict[str, tuple[int, cat.Catalog, dict[str, int]]] = field(default_factory=dict)
    _days: OrderedDict[str, wd.WindowDay] = field(default_factory=OrderedDict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _queues: dict[str, list] = field(default_factory=dict)  # creates waiting to be decided together, per stream

    # -- plumbing ------------------------------------------------------------------------------------
    def _lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    async def _retrying(self, attempt: Callable[[], Awaitable[Outcome]]) -> Outcome:
        for n in range(self.retries):
            try:
                return await attempt()
            except _Retry:
                await asyncio.sleep(random.uniform(0, 0.002 * (n + 1)))
        raise DomainError("CONFLICT", "the request kept conflicting with concurrent changes; retry it")

    async def catalog(self, org_id: str, conn: asyncpg.Connection | None = None) -> cat.Catalog:
        """The org's configuration, cached and revalidated against `orgs.config_version`."""
        if conn is None:
            async with self.pool.acquire() as conn:
                return await self.catalog(org_id, conn)
        version = await conn.fetchval("SELECT config_version FROM orgs WHERE org_id = $1", uuid.UUID(org_id))
        if version is None:
            raise not_found("organization", org_id)
        return await self._catalog_at(org_id, version, conn)

    async def _catalog_at(self, org_id: str, version: int, conn: asyncpg.Connection) -> cat.Catalog:
        cached = self._catalogs.get(org_id)
        if cached and cached[0] == version:
            return cached[1]
        rows = await conn.fetch(
            "SELECT stream_id, stream_version, event_type, data FROM events"
            " WHERE org_id = $1 AND stream_id NOT LIKE 'wd-%' ORDER BY global_position", uuid.UUID(org_id))
        catalog = cat.Catalog(org_id=org_id)
        versions: dict[str, int] = {}
        for row in rows:
            catalog.apply(ev.from_stored(row["event_type"], row["data"]))
            versions[row["stream_id"]] = row["stream_version"]
        self._catalogs[org_id] = (version, catalog, versions)
        return catalog

    async def _day(self, stream_id: str, window_id: str, date: str, conn: asyncpg.Connection) -> wd.WindowDay:
        day = self._days.get(stream_id)
        if day is not None:
            self._days.move_to_end(stream_id)
            return day
        day = wd.WindowDay(window_id=window_id, date=date)
        for stored in await self.store.read_stream(stream_id, conn=conn):
            day.apply(ev.from_stored(stored.type, stored.data))
        self._days[stream_id] = day
        if len(self._days) > self.cache_size:
            self._days.popitem(last=False)
        return day

    def _forget(self, *stream_ids: str) -> None:
        for stream in stream_ids:
            self._days.pop(stream, None)

    async def _append(self, conn: asyncpg.Connection, org_id: str, by_stream: dict[str, tuple[int, list[ev.Event]]],
                      meta: Meta, side_writes: list[SideWrite] | None = None) -> list[StoredEvent]:
        """Append per stream; `side_writes` ride in the statement of the (single) stream."""
        appends = [
            Append(stream, expected, [NewEvent(e.type, e.data(), schema_version=e.version, metadata=meta.as_dict())
                                      for e in events], org_id=uuid.UUID(org_id), side_writes=side_writes or ())
            for stream, (expected, events) in by_stream.items()
        ]
        return await self.store.append(appends, conn)

    async def _remember(self, conn: asyncpg.Connection, org_id: str, meta: Meta, outcome: Outcome) -> None:
        """Exactly-once effect for Kafka commands: the result is stored in the transaction of the events, so a
        redelivered command_id finds it and changes nothing."""
        if meta.command_id is None:
            return
        result = CommandResult.of(meta.command_id, outcome.status, outcome.data, outcome.position, outcome.idempotent)
        stored = await conn.fetchval(
            "INSERT INTO command_results (command_id, org_id, result) VALUES ($1, $2, $3)"
            " ON CONFLICT (command_id) DO NOTHING RETURNING true",
            uuid.UUID(meta.command_id), uuid.UUID(org_id), result.as_json())
        if not stored:
            raise CommandAlreadyApplied(meta.command_id)

    async def _commit(self, conn: asyncpg.Connection, days: list[wd.WindowDay],
                      write: Callable[[], Awaitable[Outcome]]) -> Outcome:
        """Run `write` in one transaction. It may fold its events into the (locked) cached days before commit;
        if anything fails they are dropped from the cache, and a lost race on a version or a unique write-side
        row retries the command."""
        try:
            async with conn.transaction():
                outcome = await write()
        except BaseException as exc:
            self._forget(*(day.stream_id for day in days))
            if isinstance(exc, (ConcurrencyError, asyncpg.UniqueViolationError)):
                raise _Retry from None
            raise
        self.store.announce()
        return outcome

    # -- configuration -------------------------------------------------------------------------------
    async def create_org(self, name: str, timezone_name: str, meta: Meta | None = None) -> cat.Catalog:
        org_id = cat.new_id()
        events = cat.create_org(org_id, name, timezone_name)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("INSERT INTO orgs (org_id, name, config_version) VALUES ($1, $2, 1)",
                               uuid.UUID(org_id), name.strip())
            await self._append(conn, org_id, {f"org-{org_id}": (0, events)}, meta or Meta())
        self.store.announce()
        return await self.catalog(org_id)

    async def configure(self, org_id: str, stream: str, decide: Callable[[cat.Catalog], list[ev.Event]],
                        meta: Meta, render: Callable[[cat.Catalog], Any] = lambda c: c,
                        status: int = 200) -> Outcome:
        """Run a configuration decision against the current catalog, append its events to `stream`, and answer
        with `render` of the catalog as it is afterwards."""
        async with self._lock(f"org-{org_id}"):
            async def attempt() -> Outcome:
                async with self.pool.acquire() as conn:
                    catalog = await self.catalog(org_id, conn)
                    events = decide(catalog)
                    if not events:
                        return Outcome(200, render(catalog))
                    after = copy.deepcopy(catalog)
                    for event in events:
                        after.apply(event)
                    expected = self._catalogs[org_id][2].get(stream, 0)
                    try:
                        async with conn.transaction():
                            stored = await self._append(conn, org_id, {stream: (expected, events)}, meta)
                            await conn.execute("UPDATE orgs SET config_version = config_version + 1"
                                               " WHERE org_id = $1", uuid.UUID(org_id))
                            outcome = Outcome(status, render(after), stored[-1].position)
                            await self._remember(conn, org_id, meta, outcome)
                    except ConcurrencyError:
                        self._catalogs.pop(org_id, None)
                        raise _Retry from None
                    self.store.announce()
                    return outcome

            return await self._retrying(attempt)

    # -- appointments --------------------------------------------------------------------------------
    async def create_appointment(self, org_id: str, request: dict[str, Any], meta: Meta) -> Outcome:
        """POST /v1/appointments after the body's shape is valid (DESIGN §3, rules 2–10)."""
        ref = request.get("external_reference_id")

        async def attempt() -> Outcome:
            async with self.pool.acquire() as conn:
                if ref is None and org_id in self._catalogs:
                    outcome = await self._create_from_cache(conn, org_id, request, meta)
                    if outcome is not None:
                        return outcome
                row = await conn.fetchrow(
                    "SELECT o.config_version, (SELECT r.appointment_id FROM booking_refs r"
                    " WHERE r.org_id = o.org_id AND r.external_reference_id = $2) AS by_ref"
                    " FROM orgs o WHERE o.org_id = $1", uuid.UUID(org_id), ref)
                if row is None:
                    raise not_found("organization", org_id)
                if row["by_ref"]:
                    return await self._existing(org_id, row["by_ref"], conn)
                catalog = await self._catalog_at(org_id, row["config_version"], conn)
                placement = self._placement(catalog, request)
                async with self._lock(placement.stream_id):
                    return await self._book(conn, org_id, catalog, placement, request, meta)

        return await self._retrying(attempt)

    def _placement(self, catalog: cat.Catalog, request: dict[str, Any]) -> wd.Placement:
        """Rules 3–7: the type, the branch, the time, and the window it lands in."""
        service = catalog.resolve_service(request["appointment_type"])
        branch = catalog.resolve_branch(request.get("branch_id"))
        start = parse_instant(request["appointment_date"])
        return wd.place(catalog, service, branch, start, request.get("session"), self.clock())

    async def _create_from_cache(self, conn: asyncpg.Connection, org_id: str, request: dict[str, Any],
                                 meta: Meta) -> Outcome | None:
        """The common create (no external reference, no doctor), decided on the cached configuration and
        appended with its write-side rows in one statement that also checks that configuration is current.
        Creates queued for the same window-day are decided and appended together (see booking_batch).
        None: take the careful path, which reads everything first."""
        if request.get("assigned_doctor"):
            return None
        version, catalog, _ = self._catalogs[org_id]
        try:
            placement = self._placement(catalog, request)
        except DomainError:
            return None  # refusals of rules 3–7 are given from a verified configuration
        return await booking_batch.submit(self, conn, org_id, catalog, version, placement, request, meta)

    async def _existing(self, org_id: str, appointment_id: str, conn: asyncpg.Connection) -> Outcome:
        stream = await conn.fetchval("SELECT stream_id FROM appointment_streams WHERE appointment_id = $1",
                                     appointment_id)
        window_id, date = wd.split_stream_id(stream)
        day = await self._day(stream, window_id, date, conn)
        if appointment_id not in day.appointments:  # our cache is behind another process
            self._forget(stream)
            raise _Retry
        return written(200, day.appointments[appointment_id], None, idempotent=True)

    async def _book(self, conn: asyncpg.Connection, org_id: str, catalog: cat.Catalog, placement: wd.Placement,
                    request: dict[str, Any], meta: Meta) -> Outcome:
        ref = request.get("external_reference_id")
        phone = wd.normalise_phone(request["parent_phone"])
        row = await conn.fetchrow(
            "SELECT (SELECT appointment_id FROM booking_refs WHERE org_id = $1 AND external_reference_id = $2)"
            " AS by_ref, (SELECT appointment_id FROM booking_keys WHERE org_id = $1 AND phone = $3"
            " AND service_id = $4 AND local_date = $5) AS duplicate",
            uuid.UUID(org_id), ref, phone, placement.service.service_id, placement.local_date)
        if row["by_ref"]:
            return await self._existing(org_id, row["by_ref"], conn)
        duplicate = row["duplicate"]
        day = await self._day(placement.stream_id, placement.window.window_id, placement.local_date.isoformat(),
                              conn)
        appointment_id = new_appointment_id()
        events = wd.book(catalog, day, placement, request, appointment_id, self.clock(), duplicate)
        doctor = doctors.doctor_time(events[0].appointment, catalog)
        if doctor is not None:
            await self._check_doctor(conn, org_id, catalog, doctor, placement.service.service_id,
                                     placement.branch.branch_id)

        org = uuid.UUID(org_id)
        side = [SideWrite(f"INSERT INTO appointment_streams SELECT $1::text, $2::uuid, $3::text WHERE {GUARD}",
                          (appointment_id, org, placement.stream_id))]
        if ref:
            side.append(SideWrite(f"INSERT INTO booking_refs SELECT $1::uuid, $2::text, $3::text WHERE {GUARD}",
                                  (org, ref, appointment_id)))
        if catalog.settings.prevent_duplicate_bookings:
            side.append(SideWrite(f"INSERT INTO booking_keys SELECT $1::uuid, $2::text, $3::text, $4::date, $5::text"
                                  f" WHERE {GUARD}", (org, phone, placement.service.service_id,
                                                      placement.local_date, appointment_id)))
        if doctor is None:  # the common case: one statement, one round trip
            return await self._append_at_once(conn, org_id, day, events, side, meta, appointment_id, 201)

        async def write() -> Outcome:
            await self._hold_doctor(conn, org_id, appointment_id, None, doctor)
            stored = await self._append(conn, org_id, {day.stream_id: (day.version, events)}, meta, side)
            _fold(day, events)
            outcome = written(201, day.appointments[appointment_id], stored[-1].position)
            await self._remember(conn, org_id, meta, outcome)
            return outcome

        return await self._commit(conn, [day], write)

    async def _append_at_once(self, conn: asyncpg.Connection, org_id: str, day: wd.WindowDay,
                              events: list[ev.Event], side: list[SideWrite], meta: Meta, appointment_id: str,
                              status: int) -> Outcome:
        """Append to one window-day with its write-side rows (and the Kafka command's result) in a single
        statement, which is its own transaction. The day is locked: its events are folded in first, so the
        result can be recorded in the same statement, and dropped from the cache if the statement fails."""
        expected = day.version
        _fold(day, events)
        outcome = written(status, day.appointments[appointment_id], None)
        if meta.command_id is not None:
            result = CommandResult.of(meta.command_id, status, outcome.data, None).as_json()
            side = [*side, results_write(uuid.UUID(org_id), [(meta.command_id, result, day.version)])]
        try:
            stored = await self._append(conn, org_id, {day.stream_id: (expected, events)}, meta, side)
        except asyncpg.UniqueViolationError as exc:
            self._forget(day.stream_id)
            if exc.constraint_name == "command_results_pkey":
                raise CommandAlreadyApplied(meta.command_id) from None
            raise _Retry from None
        except BaseException as exc:
            self._forget(day.stream_id)
            if isinstance(exc, ConcurrencyError):
                raise _Retry from None
            raise
        self.store.announce()
        outcome.position = outcome.data["position"] = stored[-1].position
        return outcome

    async def locate(self, org_id: str, appointment_id: str, conn: asyncpg.Connection) -> str:
        stream = await conn.fetchval(
            "SELECT stream_id FROM appointment_streams WHERE appointment_id = $1 AND org_id = $2",
            appointment_id, uuid.UUID(org_id))
        if stream is None:
            raise not_found("appointment", appointment_id)
        return stream

    async def get_appointment(self, org_id: str, appointment_id: str) -> dict[str, Any]:
        """The write side's current record (used where read-your-writes matters, e.g. SaludYa PUT)."""
        async with self.pool.acquire() as conn:
            stream = await self.locate(org_id, appointment_id, conn)
            day = await self._day(stream, *wd.split_stream_id(stream), conn)
            if appointment_id not in day.appointments:
                self._forget(stream)
                day = await self._day(stream, *wd.split_stream_id(stream), conn)
            return day.appointments[appointment_id]

    async def update_appointment(self, org_id: str, appointment_id: str, patch: dict[str, Any],
                                 meta: Meta) -> Outcome:
        """PATCH /v1/appointments/{id}: update, reschedule, cancel, complete."""

        async def attempt() -> Outcome:
            async with self.pool.acquire() as conn:
                catalog = await self.catalog(org_id, conn)
                streams = (await self._plan_update(conn, org_id, catalog, appointment_id, patch)).streams
                async with _all_locks([self._lock(s) for s in streams]):
                    # Plan again under the locks: another command may have changed the day meanwhile.
                    plan = await self._plan_update(conn, org_id, catalog, appointment_id, patch)
                    if plan.streams != streams:
                        raise _Retry
                    if plan.unchanged:
                        return written(200, plan.source.appointments[appointment_id], None)
                    return await self._update(conn, org_id, catalog, plan.source, appointment_id, patch,
                                              plan.placement, meta)

        return await self._retrying(attempt)

    async def _plan_update(self, conn, org_id: str, catalog: cat.Catalog, appointment_id: str,
                           patch: dict[str, Any]) -> "_UpdatePlan":
        """Where the appointment is, whether the patch changes it, and where it would move (rules 6–7)."""
        source_stream = await self.locate(org_id, appointment_id, conn)
        source = await self._day(source_stream, *wd.split_stream_id(source_stream), conn)
        appointment = source.appointments.get(appointment_id)
        if appointment is None:  # moved by another process since we cached this day
            self._forget(source_stream)
            raise _Retry
        now = self.clock()
        if not wd.check_update(catalog, appointment, patch, now):
            return _UpdatePlan([source_stream], source, None, unchanged=True)
        placement = wd.reschedule_placement(catalog, appointment, patch, now) if "appointment_date" in patch \
            else None
        streams = sorted({source_stream, placement.stream_id if placement else source_stream})
        return _UpdatePlan(streams, source, placement)

    async def _update(self, conn, org_id: str, catalog: cat.Catalog, source: wd.WindowDay, appointment_id: str,
                      patch: dict[str, Any], placement: wd.Placement | None, meta: Meta) -> Outcome:
        appointment = source.appointments[appointment_id]
        target = duplicate = None
        now = self.clock()
        phone = wd.normalise_phone(appointment["parent_phone"])
        if placement is not None:
            target = source if placement.stream_id == source.stream_id else await self._day(
                placement.stream_id, placement.window.window_id, placement.local_date.isoformat(), conn)
            duplicate = await conn.fetchval(
                "SELECT appointment_id FROM booking_keys WHERE org_id = $1 AND phone = $2 AND service_id = $3"
                " AND local_date = $4 AND appointment_id <> $5", uuid.UUID(org_id), phone,
                appointment["appointment_type"], placement.local_date, appointment_id)
        by_stream = wd.update(catalog, source, appointment_id, patch, now, target, placement, duplicate)
        if not by_stream:
            return written(200, appointment, None)
        days = {source.stream_id: source}
        if target is not None:
            days[target.stream_id] = target
        home = target or source
        after = doctors.record_after(appointment, by_stream.get(home.stream_id, []))
        doctor_before, doctor_after = doctors.doctor_time(appointment, catalog), doctors.doctor_time(after, catalog)
        doctor_moved = _span(doctor_before) != _span(doctor_after)
        if doctor_moved and doctor_after is not None:
            await self._check_doctor(conn, org_id, catalog, doctor_after, appointment["appointment_type"],
                                     appointment["branch_id"])

        async def write() -> Outcome:
            if doctor_moved:
                await self._hold_doctor(conn, org_id, appointment_id, doctor_before, doctor_after)
            stored = await self._append(conn, org_id, {s: (days[s].version, e) for s, e in by_stream.items()}, meta)
            await self._claims(conn, org_id, catalog, appointment, by_stream, phone)
            for stream, events in by_stream.items():
                _fold(days[stream], events)
            outcome = written(200, home.appointments[appointment_id], stored[-1].position)
            await self._remember(conn, org_id, meta, outcome)
            return outcome

        return await self._commit(conn, list(days.values()), write)

    async def _busy(self, conn: asyncpg.Connection, org_id: str, around: doctors.DoctorTime) -> list[
            doctors.DoctorTime]:
        """The doctor's committed appointments from a day before to a day after `around`."""
        rows = await conn.fetch(
            "SELECT appointment_id, starts_at, ends_at FROM doctor_bookings WHERE org_id = $1 AND doctor = $2"
            " AND starts_at < $4 AND ends_at > $3", uuid.UUID(org_id), around.doctor,
            around.start - timedelta(days=1), around.end + timedelta(days=1))
        return [doctors.DoctorTime(r["appointment_id"], around.doctor, r["starts_at"], r["ends_at"]) for r in rows]

    async def _check_doctor(self, conn: asyncpg.Connection, org_id: str, catalog: cat.Catalog,
                            wanted: doctors.DoctorTime, service_id: str, branch_id: str) -> None:
        """409 APPOINTMENT_CONFLICT, with the doctor's next bookable starts, when the doctor is taken."""
        busy = await self._busy(conn, org_id, wanted)
        clash = doctors.first_clash(wanted, busy)
        if clash is None:
            return
        local_date = local(wanted.start, catalog.settings.timezone).date()
        days = {}
        for window in catalog.windows.values():
            if window.branch_id == branch_id and window.occurs_on(local_date):
                stream = wd.stream_id(window.window_id, local_date)
                days[stream] = await self._day(stream, window.window_id, local_date.isoformat(), conn)
        raise doctors.conflict(clash, doctors.suggest_times(catalog, service_id, branch_id, wanted, busy, days,
                                                            self.clock()))

    async def _hold_doctor(self, conn: asyncpg.Connection, org_id: str, appointment_id: str,
                           before: doctors.DoctorTime | None, after: doctors.DoctorTime | None) -> None:
        """In the write transaction: claim the doctor's time, or give it back. The per-doctor lock (taken before
        any stream is touched, so locks are always taken in one order) makes the overlap check race-free; a
        clash found here means our earlier read was stale, and the command is decided again."""
        if after is None:
            if before is not None:
                await conn.execute("DELETE FROM doctor_bookings WHERE appointment_id = $1", appointment_id)
            return
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"doctor|{org_id}|{after.doctor}")
        clash = await conn.fetchval(
            "SELECT appointment_id FROM doctor_bookings WHERE org_id = $1 AND doctor = $2 AND starts_at < $4"
            " AND ends_at > $3 AND appointment_id <> $5 LIMIT 1", uuid.UUID(org_id), after.doctor, after.start,
            after.end, appointment_id)
        if clash is not None:
            raise _Retry
        await conn.execute(
            "INSERT INTO doctor_bookings VALUES ($1, $2, $3, $4, $5) ON CONFLICT (appointment_id) DO UPDATE"
            " SET doctor = EXCLUDED.doctor, starts_at = EXCLUDED.starts_at, ends_at = EXCLUDED.ends_at",
            appointment_id, uuid.UUID(org_id), after.doctor, after.start, after.end)

    async def _claims(self, conn, org_id: str, catalog: cat.Catalog, before: dict[str, Any],
                      by_stream: dict[str, list[ev.Event]], phone: str) -> None:
        """Keep the write-side tables in step with what the events did."""
        org = uuid.UUID(org_id)
        appointment_id = before["appointment_id"]
        for stream, events in by_stream.items():
            for event in events:
                if isinstance(event, ev.AppointmentRescheduled):
                    await conn.execute("UPDATE appointment_streams SET stream_id = $2 WHERE appointment_id = $1",
                                       appointment_id, stream)
                    if event.appointment["date"] != before["date"]:
                        await conn.execute("DELETE FROM booking_keys WHERE appointment_id = $1", appointment_id)
                        if catalog.settings.prevent_duplicate_bookings:
                            await conn.execute(
                                "INSERT INTO booking_keys VALUES ($1, $2, $3, $4, $5)", org, phone,
                                before["appointment_type"], datetime.fromisoformat(event.appointment["date"]).date(),
                                appointment_id)
                elif isinstance(event, ev.AppointmentStatusChanged) and event.status == "cancelled":
                    await conn.execute("DELETE FROM booking_keys WHERE appointment_id = $1", appointment_id)
                    await conn.execute("DELETE FROM booking_refs WHERE appointment_id = $1", appointment_id)

    # -- schedule tracking ---------------------------------------------------------------------------
    async def adjust_day(self, org_id: str, window_id: str, date: str, status: str | None, max_slots: int | None,
                         meta: Meta) -> Outcome:
        stream = wd.stream_id(window_id, date)

        async def attempt() -> Outcome:
            async with self.pool.acquire() as conn:
                catalog = await self.catalog(org_id, conn)
                window = catalog.window(window_id)
                if not window.occurs_on(parse_day(date)):
                    raise DomainError("VALIDATION_ERROR", f"the window runs on {window.day_of_week}s, not on {date}",
                                      {"date": f"not a {window.day_of_week}"})
                async with self._lock(stream):
                    day = await self._day(stream, window_id, date, conn)
                    events = wd.adjust_day(day, status, max_slots)
                    if not events:
                        return Outcome(200, day_record(window, day))

                    async def write() -> Outcome:
                        stored = await self._append(conn, org_id, {stream: (day.version, events)}, meta)
                        _fold(day, events)
                        outcome = Outcome(200, day_record(window, day), stored[-1].position)
                        await self._remember(conn, org_id, meta, outcome)
                        return outcome

                    return await self._commit(conn, [day], write)

        return await self._retrying(attempt)

    async def window_days(self, org_id: str, stream_ids: list[str]) -> list[wd.WindowDay]:
        """Window-days folded afresh from the log (schedule-tracking regeneration)."""
        async with self.pool.acquire() as conn:
            out = []
            for stream in stream_ids:
                day = wd.WindowDay(*wd.split_stream_id(stream))
                for stored in await self.store.read_stream(stream, conn=conn):
                    day.apply(ev.from_stored(stored.type, stored.data))
                out.append(day)
            return out


def _span(time: doctors.DoctorTime | None) -> tuple | None:
    return None if time is None else (time.doctor, time.start, time.end)


def _fold(day: wd.WindowDay, events: list[ev.Event]) -> None:
    for event in events:
        day.apply(event)


def day_record(window: cat.Window, day: wd.WindowDay) -> dict[str, Any]:
    filled = day.filled_by_service()
    return {
        "window_id": window.window_id, "branch_id": window.branch_id, "date": day.date,
        "session": window.session, "batch": window.batch, "start_time": window.start_time,
        "end_time": window.end_time, "status": day.effective_status(window), "max_slots": day.capacity(window),
        "filled_count": sum(filled.values()), "filled_by_service": filled,
    }


@dataclass
class _UpdatePlan:
    streams: list[str]  # sorted: the lock order
    source: wd.WindowDay
    placement: wd.Placement | None
    unchanged: bool = False


class _all_locks:
    """Hold several asyncio locks, taken in the given (sorted) order so two movers never deadlock."""

    def __init__(self, locks: list[asyncio.Lock]):
        self.locks = locks

    async def __aenter__(self) -> None:
        for lock in self.locks:
            await lock.acquire()

    async def __aexit__(self, *exc: object) -> None:
        for lock in reversed(self.locks):
            lock.release()
