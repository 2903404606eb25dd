"""The command handler: load what a command needs, let the domain decide, commit through the unit of work.

Within one process, commands for one window-day queue on its lock, so they never conflict with each other
and the cached window-day stays fresh; across processes the streams' expected versions and the write-side
constraints catch every race, and the command is decided again (bounded).
"""
from __future__ import annotations

import copy
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import asyncpg

from domain import catalog as cat
from domain import decisions
from domain import doctors
from domain import events as ev
from domain import windowday as wd
from domain.patients import phone_key
from domain.appointment import Appointment
from domain.errors import DomainError, not_found
from domain.holds import short_id
from domain.timerules import local, parse_day
from projections import write_side
from projections.base import Write, recordset
from projections.queries import day_view
from services.booking_batch import BookingBatcher
from services.command_results import pending
from services.holding import Holding
from services.outcome import Meta, Outcome, written
from services.routing import Router
from services.store.eventstore import EventStore
from services.unit_of_work import Change, Conflict, UnitOfWork, Work

def new_appointment_id() -> str:
    """`appt_` + 10 random lowercase letters and digits (51 bits)."""
    return short_id("appt")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class CommandHandler(Holding):
    def __init__(self, pool: asyncpg.Pool, store: EventStore, retries: int = 8,
                 clock: Callable[[], datetime] = utcnow, cache_size: int = 20_000):
        self.pool = pool
        self.store = store
        self.clock = clock
        self.uow = UnitOfWork(pool, store, retries, cache_size)
        self.batcher = BookingBatcher(self.uow, lambda: self.clock(), new_appointment_id)
        self.router: Router | None = None  # with several workers: creates go to the worker owning their date

    async def catalog(self, org_id: str, conn: asyncpg.Connection | None = None) -> cat.Catalog:
        """The org's current configuration."""
        if conn is None:
            async with self.pool.acquire() as conn:
                return (await self.uow.catalog(org_id, conn))[1]
        return (await self.uow.catalog(org_id, conn))[1]

    # -- configuration -------------------------------------------------------------------------------
    async def create_org(self, name: str, timezone_name: str, meta: Meta | None = None) -> cat.Catalog:
        org_id = cat.new_id()
        events = cat.create_org(org_id, name, timezone_name)
        org = uuid.UUID(org_id)
        row = Write("orgs", "INSERT INTO orgs (org_id, name, config_version)"
                               " SELECT * FROM " + recordset("org_id uuid, name text, config_version bigint")
                               + " WHERE {guard}",
                               (org, name.strip(), 1), (org,))
        change = Change(f"org-{org_id}", 0, events, [meta or Meta()] * len(events))
        async with self.pool.acquire() as conn:
            await self.uow.commit(conn, Work(org_id, cat.Catalog(org_id), None, [change],
                                             writes=[row, write_side.config_stream(org, change.stream_id)]))
        return await self.catalog(org_id)

    async def configure(self, org_id: str, stream: str, decide: Callable[[cat.Catalog], list[ev.Event]],
                        meta: Meta, render: Callable[[cat.Catalog], Any] = lambda c: c,
                        status: int = 200) -> Outcome:
        """Run a configuration decision against the current catalog, append its events to `stream`, and answer
        with `render` of the catalog as it is afterwards."""
        async def attempt() -> Outcome:
            async with self.pool.acquire() as conn:
                version, catalog = await self.uow.catalog(org_id, conn)
                events = decide(catalog)
                if not events:
                    return Outcome(200, render(catalog))
                after = catalog.evolved(events)
                outcome = Outcome(status, render(after))
                expected = self.uow.catalog_stream_version(org_id, stream)
                result = pending(meta, outcome, expected + len(events))
                stored = await self.uow.commit(conn, Work(
                    org_id, catalog, version, [Change(stream, expected, events, [meta] * len(events))],
                    results=[(stream, result)] if result else (),
                    writes=[write_side.config_changed(uuid.UUID(org_id)),
                            write_side.config_stream(uuid.UUID(org_id), stream)]))
                outcome.position = stored[-1].position
                return outcome

        async with self.uow.lock(f"org-{org_id}"):
            return await self.uow.retrying(attempt)

    # -- appointments --------------------------------------------------------------------------------
    async def create_appointment(self, org_id: str, request: dict[str, Any], meta: Meta,
                                 handed_over: bool = False) -> Outcome:
        """POST /v1/appointments after the body's shape is valid (DESIGN §3, rules 2–10). `handed_over`: another
        worker sent it here, to the owner of its date (services/routing.py)."""
        ref = request.get("external_reference_id")

        async def attempt() -> Outcome:
            cached = self.uow.cached_catalog(org_id)
            if ref is None and cached is not None and not request.get("assigned_doctor"):
                # The common create: decided on the cached configuration, committed with the creates queued
                # meanwhile (services/booking_batch.py); the append holds only if that configuration is current.
                try:
                    placement = decisions.plan_create(cached[1], request, self.clock())
                except DomainError:
                    placement = None  # refusals of rules 3–7 are given from a verified configuration
                if placement is not None:
                    outcome = None if handed_over else await self._to_owner(org_id, placement, request, meta)
                    if outcome is None:
                        outcome = await self.batcher.submit(org_id, cached[1], cached[0], placement, request, meta)
                    if outcome is not None:
                        return outcome
            async with self.pool.acquire() as conn:
                row = await conn.fetchrow(
                    "SELECT o.config_version, (SELECT r.appointment_id FROM booking_refs r"
                    " WHERE r.org_id = o.org_id AND r.external_reference_id = $2) AS by_ref"
                    " FROM orgs o WHERE o.org_id = $1", uuid.UUID(org_id), ref)
                if row is None:
                    raise not_found("organization", org_id)
                catalog = await self.uow.catalog_at(org_id, row["config_version"], conn)
                if row["by_ref"]:
                    existing = await self._current(conn, catalog, org_id, row["by_ref"])
                    return written(200, existing.as_dict(), None, idempotent=True)
                placement = decisions.plan_create(catalog, request, self.clock())
                async with self.uow.lock(placement.stream_id):
                    return await self._book(conn, org_id, catalog, row["config_version"], placement, request, meta)

        return await self.uow.retrying(attempt)

    async def _to_owner(self, org_id: str, placement: wd.Placement, request: dict[str, Any],
                        meta: Meta) -> Outcome | None:
        """The answer of the worker that owns the create's date, when that is another worker and it can be
        reached (services/routing.py). Kafka commands are routed by their partitions already."""
        router = self.router
        if router is None or meta.command_id is not None:
            return None
        owner = router.owner(org_id, placement.local_date)
        return None if owner == router.worker else await router.create(owner, org_id, request, meta)

    async def _book(self, conn: asyncpg.Connection, org_id: str, catalog: cat.Catalog, version: int,
                    placement: wd.Placement, request: dict[str, Any], meta: Meta) -> Outcome:
        """The careful create: every cross-window-day fact read first (rule 9 and the doctor)."""
        row = await conn.fetchrow(
            "SELECT (SELECT appointment_id FROM booking_keys WHERE org_id = $1 AND phone = $2 AND service_id = $3"
            " AND local_date = $4) AS duplicate, (SELECT version FROM streams WHERE stream_id = $5) AS version",
            uuid.UUID(org_id), phone_key(request["parent_phone"], catalog.settings.phone_region),
            placement.service.service_id, placement.local_date, placement.stream_id)
        duplicate = row["duplicate"] if catalog.settings.prevent_duplicate_bookings else None
        day = await self.uow.day(placement.stream_id, conn, catalog, row["version"] or 0)
        now = self.clock()
        events = decisions.decide_create(catalog, day, placement, request, new_appointment_id(), now, duplicate)
        record = Appointment.from_dict(events[0].appointment)
        doctor = doctors.doctor_time(record, catalog)
        if doctor is not None:
            await self._check_doctor(conn, org_id, catalog, doctor, placement.service.service_id,
                                     placement.branch.branch_id)
        outcome = written(201, record.as_dict(), None)
        result = pending(meta, outcome, day.version + 1, events[-1])
        stored = await self.uow.commit(conn, Work(
            org_id, catalog, version, [Change(day.stream_id, day.version, events, [meta])],
            touched=[(None, record)], results=[(day.stream_id, result)] if result else ()))
        day.fold(events)
        outcome.position = outcome.data["position"] = stored[-1].position
        return outcome

    async def locate(self, org_id: str, appointment_id: str, conn: asyncpg.Connection) -> tuple[str, int]:
        """The window-day stream holding the appointment now, and that stream's version."""
        row = await conn.fetchrow(
            "SELECT a.stream_id, s.version FROM appointment_streams a JOIN streams s USING (stream_id)"
            " WHERE a.appointment_id = $1 AND a.org_id = $2", appointment_id, uuid.UUID(org_id))
        if row is None:
            raise not_found("appointment", appointment_id)
        return row["stream_id"], row["version"]

    async def _current(self, conn: asyncpg.Connection, catalog: cat.Catalog, org_id: str,
                       appointment_id: str) -> Appointment:
        """The write side's current record of an appointment."""
        stream, version = await self.locate(org_id, appointment_id, conn)
        day = await self.uow.day(stream, conn, catalog, version)
        if appointment_id not in day.appointments:  # moved on since the two reads
            raise Conflict
        return day.appointments[appointment_id]

    async def get_appointment(self, org_id: str, appointment_id: str) -> Appointment:
        async def attempt() -> Appointment:
            async with self.pool.acquire() as conn:
                return await self._current(conn, (await self.uow.catalog(org_id, conn))[1], org_id, appointment_id)

        return await self.uow.retrying(attempt)

    async def update_appointment(self, org_id: str, appointment_id: str, patch: dict[str, Any],
                                 meta: Meta, strict: bool = False) -> Outcome:
        """PATCH /v1/appointments/{id}: update, reschedule, cancel, complete. `strict`: SaludYa's rules."""

        async def attempt() -> Outcome:
            async with self.pool.acquire() as conn:
                version, catalog = await self.uow.catalog(org_id, conn)
                source_stream, _ = await self.locate(org_id, appointment_id, conn)
                target_stream = None
                if "appointment_date" in patch:
                    appointment = await self._current(conn, catalog, org_id, appointment_id)
                    target_stream = decisions.plan_update(catalog, appointment, patch, self.clock(),
                                                          strict).stream_id
                async with self.uow.locks([s for s in (source_stream, target_stream) if s]):
                    return await self._update(conn, org_id, catalog, version, source_stream, target_stream,
                                              appointment_id, patch, meta, strict)

        return await self.uow.retrying(attempt)

    async def _update(self, conn: asyncpg.Connection, org_id: str, catalog: cat.Catalog, version: int,
                      source_stream: str, target_stream: str | None, appointment_id: str, patch: dict[str, Any],
                      meta: Meta, strict: bool) -> Outcome:
        # Under the locks, plan again: another command may have moved the appointment or changed the day.
        stream, stream_version = await self.locate(org_id, appointment_id, conn)
        if stream != source_stream:
            raise Conflict
        source = await self.uow.day(source_stream, conn, catalog, stream_version)
        if appointment_id not in source.appointments:
            raise Conflict
        before = source.appointments[appointment_id]
        now = self.clock()
        plan = decisions.plan_update(catalog, before, patch, now, strict)
        if plan.unchanged:
            return written(200, before.as_dict(), None)
        if plan.stream_id != target_stream:
            raise Conflict
        target = duplicate = None
        if plan.placement is not None:
            row = await conn.fetchrow(
                "SELECT (SELECT appointment_id FROM booking_keys WHERE org_id = $1 AND phone = $2 AND service_id = $3"
                " AND local_date = $4 AND appointment_id <> $5) AS duplicate,"
                " (SELECT version FROM streams WHERE stream_id = $6) AS version", uuid.UUID(org_id),
                phone_key(before.parent_phone, catalog.settings.phone_region), before.appointment_type,
                plan.placement.local_date,
                appointment_id, plan.placement.stream_id)
            duplicate = row["duplicate"]
            target = source if plan.placement.stream_id == source_stream else await self.uow.day(
                plan.placement.stream_id, conn, catalog, row["version"] or 0)
        by_stream = decisions.decide_update(catalog, source, appointment_id, patch, now, target, plan.placement,
                                            duplicate)
        if not by_stream:
            return written(200, before.as_dict(), None)
        home = target or source
        after = doctors.record_after(before, by_stream.get(home.stream_id, []))
        doctor_after = doctors.doctor_time(after, catalog)
        if doctor_after is not None and doctor_after != doctors.doctor_time(before, catalog):
            await self._check_doctor(conn, org_id, catalog, doctor_after, before.appointment_type,
                                     before.branch_id)
        days = {source.stream_id: source, home.stream_id: home}
        by_stream = await self._settled(conn, catalog, days, by_stream, now)  # a freed place goes to the waitlist
        return await self._commit_days(conn, org_id, catalog, version, days, by_stream, meta,
                                       written(200, after.as_dict(), None), home.stream_id,
                                       touched=[(before, after)])

    async def _check_doctor(self, conn: asyncpg.Connection, org_id: str, catalog: cat.Catalog,
                            wanted: doctors.DoctorTime, service_id: str, branch_id: str,
                            ignoring: str | None = None) -> None:
        """409 APPOINTMENT_CONFLICT, with the doctor's next bookable starts, when the doctor is taken (`ignoring`:
        the hold being confirmed). A booking committed after this read is caught by doctor_bookings' exclusion
        constraint, and decided again. Rows of expired holds no longer count: they are cleared first, so the
        constraint does not count them either."""
        org, now = uuid.UUID(org_id), self.clock()
        rows = await conn.fetch(
            "SELECT appointment_id, starts_at, ends_at, hold_expires_at FROM doctor_bookings WHERE org_id = $1"
            " AND doctor = $2 AND starts_at < $4 AND ends_at > $3", org, wanted.doctor,
            wanted.start - timedelta(days=1), wanted.end + timedelta(days=1))
        expired = [r["appointment_id"] for r in rows if r["hold_expires_at"] and r["hold_expires_at"] <= now]
        if expired:
            await conn.execute("DELETE FROM doctor_bookings WHERE appointment_id = ANY($1::text[])"
                               " AND hold_expires_at <= $2", expired, now)
        busy = [doctors.DoctorTime(r["appointment_id"], wanted.doctor, r["starts_at"], r["ends_at"]) for r in rows
                if r["appointment_id"] not in (ignoring, *expired)]
        clash = doctors.first_clash(wanted, busy)
        if clash is None:
            return
        local_date = local(wanted.start, catalog.settings.timezone).date()
        days = {}
        for window in catalog.windows.values():
            if window.branch_id == branch_id and window.occurs_on(local_date):
                stream = wd.stream_id(window.window_id, local_date)
                days[stream] = await self.uow.day(stream, conn, catalog)
        raise doctors.conflict(clash, doctors.suggest_times(catalog, service_id, branch_id, wanted, busy, days,
                                                            self.clock()))

    # -- schedule tracking ---------------------------------------------------------------------------
    async def adjust_day(self, org_id: str, window_id: str, date: str, status: str | None, max_slots: int | None,
                         meta: Meta) -> Outcome:
        stream = wd.stream_id(window_id, date)

        async def attempt() -> Outcome:
            async with self.pool.acquire() as conn:
                version, catalog = await self.uow.catalog(org_id, conn)
                window = catalog.window(window_id)
                if not window.occurs_on(parse_day(date)):
                    raise DomainError("VALIDATION_ERROR", f"the window runs on {window.day_of_week}s, not on {date}",
                                      {"date": f"not a {window.day_of_week}"})
                async with self.uow.lock(stream):
                    day = await self.uow.fresh_day(stream, conn, catalog)
                    events = wd.adjust_day(day, status, max_slots)
                    if not events:
                        return Outcome(200, day_view(window, day))
                    days = {stream: day}
                    by_stream = await self._settled(conn, catalog, days, {stream: events}, self.clock())
                    after = copy.deepcopy(day)
                    after.fold(by_stream[stream])
                    return await self._commit_days(conn, org_id, catalog, version, days, by_stream, meta,
                                                   Outcome(200, day_view(window, after)), stream)

        return await self.uow.retrying(attempt)

