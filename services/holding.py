"""Holds and the waitlist (DESIGN §8): the command handler's part that loads what these decisions need and
commits them. Every decision that can free a place goes through `_settled`, so the first waiting entry gets the
place in the very commit that frees it.
"""
from __future__ import annotations

import copy
import uuid
from datetime import date, datetime, timedelta
from typing import Any

import asyncpg

from domain import catalog as cat
from domain import decisions, doctors
from domain import events as ev
from domain import holds
from domain import windowday as wd
from domain.appointment import Appointment
from domain.errors import DomainError, not_found
from domain.hold import Hold, WaitlistEntry
from domain.patients import phone_key
from domain.timerules import iso_utc, local, parse_instant
from projections import queries
from services.command_results import pending
from services.outcome import Meta, Outcome, written
from services.unit_of_work import Change, Conflict, Work


class Holding:
    """Mixed into CommandHandler: uses its pool, unit of work, clock, `_check_doctor` and `_current`."""

    # -- shared: offers for freed places, and the commit ----------------------------------------------
    async def _settled(self, conn: asyncpg.Connection, catalog: cat.Catalog, days: dict[str, wd.WindowDay],
                       by_stream: dict[str, list[ev.Event]], now: datetime) -> dict[str, list[ev.Event]]:
        """`by_stream` and the offers it causes. Window-days the offered entries also queue on join `days`."""
        if not any(days[s].waiting or any(isinstance(e, ev.WaitlistJoined) for e in events)
                   for s, events in by_stream.items()):
            return by_stream
        settled = holds.settle(catalog, days, by_stream, now)
        for stream in sorted(settled.elsewhere):
            # A copy: this command does not hold that day's lock, and only its lock holder changes a cached day.
            day = copy.deepcopy(await self.uow.fresh_day(stream, conn, catalog))
            left = holds.let_go(day, settled.offered)
            if left:
                days[stream] = day
                settled.by_stream[stream] = left
        return settled.by_stream

    async def _commit_days(self, conn: asyncpg.Connection, org_id: str, catalog: cat.Catalog, version: int,
                           days: dict[str, wd.WindowDay], by_stream: dict[str, list[ev.Event]], meta: Meta,
                           outcome: Outcome, home: str, touched=()) -> Outcome:
        """Append `by_stream` at the days' versions, answer `outcome` (its result riding on `home`'s last event),
        and fold the events into the cached days once they hold. An appointment's record (`touched`) carries
        the log position of the write."""
        changes = [Change(s, days[s].version, events, [meta] * len(events)) for s, events in by_stream.items()]
        result = pending(meta, outcome, days[home].version + len(by_stream[home]), by_stream[home][-1])
        stored = await self.uow.commit(conn, Work(org_id, catalog, version, changes, touched=touched,
                                                  results=[(home, result)] if result else ()))
        for stream, events in by_stream.items():
            days[stream].fold(events)
        outcome.position = stored[-1].position
        if touched:
            outcome.data["position"] = outcome.position
        return outcome

    async def _hold_row(self, conn: asyncpg.Connection, org_id: str, hold_id: str) -> asyncpg.Record:
        row = await conn.fetchrow("SELECT stream_id, status, appointment_id, record FROM rm_holds"
                                  " WHERE org_id = $1 AND hold_id = $2", uuid.UUID(org_id), hold_id)
        if row is None:
            raise not_found("hold", hold_id)
        return row

    # -- holds ------------------------------------------------------------------------------------------
    async def place_hold(self, org_id: str, request: dict[str, Any], minutes: int, meta: Meta) -> Outcome:
        """POST /v1/appointment-holds: create rules 3–10, then a place kept for `minutes`."""
        async def attempt() -> Outcome:
            async with self.pool.acquire() as conn:
                version, catalog = await self.uow.catalog(org_id, conn)
                placement = decisions.plan_create(catalog, request, self.clock())
                async with self.uow.lock(placement.stream_id):
                    phone = request.get("parent_phone")
                    row = await conn.fetchrow(
                        "SELECT (SELECT appointment_id FROM booking_keys WHERE org_id = $1 AND phone = $2"
                        " AND service_id = $3 AND local_date = $4) AS duplicate,"
                        " (SELECT version FROM streams WHERE stream_id = $5) AS version",
                        uuid.UUID(org_id), phone_key(phone, catalog.settings.phone_region) if phone else None,
                        placement.service.service_id, placement.local_date, placement.stream_id)
                    day = await self.uow.day(placement.stream_id, conn, catalog, row["version"] or 0)
                    now = self.clock()
                    duplicate = row["duplicate"] if catalog.settings.prevent_duplicate_bookings else None
                    events = holds.place(catalog, day, placement, request, holds.short_id("hold"), now, minutes,
                                         duplicate)
                    hold = Hold.from_dict(events[0].hold)
                    doctor = doctors.hold_time(hold, catalog)
                    if doctor is not None:
                        await self._check_doctor(conn, org_id, catalog, doctor, hold.appointment_type,
                                                 hold.branch_id)
                    outcome = Outcome(201, queries.hold_view(hold.as_dict(), "held", None, now))
                    return await self._commit_days(conn, org_id, catalog, version, {day.stream_id: day},
                                                   {day.stream_id: events}, meta, outcome, day.stream_id)

        return await self.uow.retrying(attempt)

    async def confirm_hold(self, org_id: str, hold_id: str, given: dict[str, Any], meta: Meta) -> Outcome:
        """POST /v1/appointment-holds/{id}/confirm: the held place becomes a booking (the create's answer)."""
        async def attempt() -> Outcome:
            async with self.pool.acquire() as conn:
                version, catalog = await self.uow.catalog(org_id, conn)
                row = await self._hold_row(conn, org_id, hold_id)
                if row["status"] == "confirmed":  # a retried confirmation: the booking it made
                    existing = await self._current(conn, catalog, org_id, row["appointment_id"])
                    return written(200, existing.as_dict(), None, idempotent=True)
                if row["status"] != "held":
                    raise _gone(hold_id, row["status"])
                stream = row["stream_id"]
                async with self.uow.lock(stream):
                    day = await self.uow.fresh_day(stream, conn, catalog)
                    hold = day.holds.get(hold_id)
                    if hold is None:
                        raise Conflict  # confirmed, released or expired since the read
                    request = {**hold.request(), **{k: v for k, v in given.items() if v is not None}}
                    ref = request.get("external_reference_id")
                    phone = request.get("parent_phone")
                    facts = await conn.fetchrow(
                        "SELECT (SELECT appointment_id FROM booking_refs WHERE org_id = $1"
                        " AND external_reference_id = $2) AS by_ref, (SELECT appointment_id FROM booking_keys"
                        " WHERE org_id = $1 AND phone = $3 AND service_id = $4 AND local_date = $5) AS duplicate",
                        uuid.UUID(org_id), ref, phone_key(phone, catalog.settings.phone_region) if phone else None,
                        hold.appointment_type, date.fromisoformat(hold.date))
                    if facts["by_ref"]:
                        existing = await self._current(conn, catalog, org_id, facts["by_ref"])
                        return written(200, existing.as_dict(), None, idempotent=True)
                    now = self.clock()
                    duplicate = facts["duplicate"] if catalog.settings.prevent_duplicate_bookings else None
                    events = holds.confirm(catalog, day, hold_id, given, holds.short_id("appt"), now, duplicate)
                    record = Appointment.from_dict(events[1].appointment)
                    doctor = doctors.doctor_time(record, catalog)
                    if doctor is not None:
                        await self._check_doctor(conn, org_id, catalog, doctor, record.appointment_type,
                                                 record.branch_id, ignoring=hold_id)
                    outcome = written(201, record.as_dict(), None)
                    return await self._commit_days(conn, org_id, catalog, version, {stream: day}, {stream: events},
                                                   meta, outcome, stream, touched=[(None, record)])

        return await self.uow.retrying(attempt)

    async def release_hold(self, org_id: str, hold_id: str, meta: Meta) -> Outcome:
        """DELETE /v1/appointment-holds/{id}: the place is free again (for the waitlist first)."""
        async def attempt() -> Outcome:
            async with self.pool.acquire() as conn:
                version, catalog = await self.uow.catalog(org_id, conn)
                row = await self._hold_row(conn, org_id, hold_id)
                if row["status"] == "confirmed":
                    raise DomainError("INVALID_STATE_TRANSITION", f"the hold was confirmed as appointment "
                                      f"'{row['appointment_id']}'; cancel the appointment instead",
                                      {"appointment_id": row["appointment_id"]})
                now = self.clock()
                if row["status"] != "held":
                    return Outcome(200, queries.hold_view(row["record"], row["status"], None, now))
                stream = row["stream_id"]
                async with self.uow.lock(stream):
                    day = await self.uow.fresh_day(stream, conn, catalog)
                    events = holds.release(day, hold_id)
                    if not events:
                        raise Conflict
                    outcome = Outcome(200, queries.hold_view(row["record"], "released", None, now))
                    days = {stream: day}
                    by_stream = await self._settled(conn, catalog, days, {stream: events}, now)
                    return await self._commit_days(conn, org_id, catalog, version, days, by_stream, meta, outcome,
                                                   stream)

        return await self.uow.retrying(attempt)

    async def expire_holds(self, org_id: str, stream: str, meta: Meta) -> int:
        """The sweeper's step for one window-day: hold.expired for each hold past its time, and the offers the
        freed places cause. Returns how many holds expired."""
        async def attempt() -> int:
            async with self.pool.acquire() as conn:
                version, catalog = await self.uow.catalog(org_id, conn)
                async with self.uow.lock(stream):
                    day = await self.uow.fresh_day(stream, conn, catalog)
                    now = self.clock()
                    events = holds.expire(day, now)
                    if not events:
                        return 0
                    days = {stream: day}
                    by_stream = await self._settled(conn, catalog, days, {stream: events}, now)
                    await self._commit_days(conn, org_id, catalog, version, days, by_stream, meta,
                                            Outcome(200, None), stream)
                    return sum(isinstance(e, ev.HoldExpired) for e in events)

        return await self.uow.retrying(attempt)

    async def offer_waiting(self, org_id: str, window_id: str, meta: Meta) -> int:
        """After a window's capacity is raised or it reopens (a configuration change, decided on the org's
        configuration streams, not on its window-days): each of its window-days with a queue offers what is
        now free, in its own commit. Returns how many offers were made."""
        async with self.pool.acquire() as conn:
            streams = [r["s"] for r in await conn.fetch(
                "SELECT DISTINCT s FROM rm_waitlist, unnest(streams) AS s WHERE org_id = $1 AND status = 'waiting'"
                " AND s LIKE $2 ORDER BY s", uuid.UUID(org_id), f"wd-{window_id}-%")]
        follow_up = Meta(request_id=meta.request_id, actor=meta.actor)  # the command's own result is stored
        offered = 0
        for stream in streams:
            offered += await self.uow.retrying(lambda s=stream: self._offer_free(org_id, s, follow_up))
        return offered

    async def _offer_free(self, org_id: str, stream: str, meta: Meta) -> int:
        async with self.pool.acquire() as conn:
            version, catalog = await self.uow.catalog(org_id, conn)
            async with self.uow.lock(stream):
                day = await self.uow.fresh_day(stream, conn, catalog)
                days = {stream: day}
                by_stream = await self._settled(conn, catalog, days, {stream: []}, self.clock())
                if not by_stream[stream]:
                    return 0
                offers = sum(isinstance(e, ev.WaitlistOffered) for e in by_stream[stream])
                await self._commit_days(conn, org_id, catalog, version, days, by_stream, meta, Outcome(200, None),
                                        stream)
                return offers

    # -- the waitlist ------------------------------------------------------------------------------------
    async def join_waitlist(self, org_id: str, request: dict[str, Any], meta: Meta) -> Outcome:
        """POST /v1/waitlist: join the queue of every window-day matching the type, date, branch and session
        (an open place, if any, is offered at once)."""
        async def attempt() -> Outcome:
            async with self.pool.acquire() as conn:
                version, catalog = await self.uow.catalog(org_id, conn)
                ref = request.get("external_reference_id")
                if ref:
                    existing = await queries.waitlist_by_ref(conn, org_id, ref)
                    if existing is not None:
                        return Outcome(200, existing, idempotent=True)
                entry = _entry(catalog, request, self.clock())
                async with self.uow.locks(list(entry.streams)):
                    days = {s: await self.uow.fresh_day(s, conn, catalog) for s in entry.streams}
                    now = self.clock()
                    joined = {s: [ev.WaitlistJoined(entry=entry.as_dict())] for s in entry.streams}
                    by_stream = await self._settled(conn, catalog, days, joined, now)
                    outcome = Outcome(201, _joined_view(entry, days, by_stream))
                    return await self._commit_days(conn, org_id, catalog, version, days, by_stream, meta, outcome,
                                                   entry.streams[0])

        return await self.uow.retrying(attempt)

    async def leave_waitlist(self, org_id: str, waitlist_id: str, meta: Meta) -> Outcome:
        """DELETE /v1/waitlist/{id}: out of every queue; an offer it holds is released and passes on."""
        async def attempt() -> Outcome:
            async with self.pool.acquire() as conn:
                version, catalog = await self.uow.catalog(org_id, conn)
                now = self.clock()
                entry = await queries.waitlist_entry(conn, org_id, waitlist_id)
                if entry is None:
                    raise not_found("waitlist entry", waitlist_id)
                if entry["status"] not in ("waiting", "offered"):
                    return Outcome(200, entry)
                streams = list(entry["streams"])
                if entry["status"] == "offered":
                    streams = [(await self._hold_row(conn, org_id, entry["hold_id"]))["stream_id"]]
                async with self.uow.locks(streams):
                    days = {s: await self.uow.fresh_day(s, conn, catalog) for s in streams}
                    left = {s: events for s in streams if (events := holds.leave(days[s], waitlist_id))}
                    if not left:
                        raise Conflict  # offered, or expired, since the read
                    by_stream = await self._settled(conn, catalog, days, left, now)
                    outcome = Outcome(200, {**entry, "status": "left", "position": None})
                    return await self._commit_days(conn, org_id, catalog, version, days, by_stream, meta, outcome,
                                                   sorted(left)[0])

        return await self.uow.retrying(attempt)


def _joined_view(entry: WaitlistEntry, days: dict[str, wd.WindowDay],
                 by_stream: dict[str, list[ev.Event]]) -> dict[str, Any]:
    """The new entry as GET will show it: offered at once, or waiting behind those already in its queues."""
    offered = {e.waitlist_id: e for events in by_stream.values() for e in events
               if isinstance(e, ev.WaitlistOffered)}
    mine = offered.get(entry.waitlist_id)
    ahead = {e.waitlist_id for s in entry.streams for e in days[s].waiting} - set(offered)
    return queries.entry_view({"record": entry.as_dict(), "status": "offered" if mine else "waiting",
                               "position": None if mine else len(ahead) + 1, "hold_id": mine and mine.hold_id,
                               "offer_expires_at": mine and parse_instant(mine.expires_at, "expires_at"),
                               "appointment_id": None})


def _gone(hold_id: str, status: str) -> DomainError:
    if status == "expired":
        return holds.hold_expired(hold_id)
    return DomainError("HOLD_RELEASED", f"hold '{hold_id}' was released; place a new hold", {"hold_id": hold_id})


def _entry(catalog: cat.Catalog, request: dict[str, Any], now: datetime) -> WaitlistEntry:
    """Rules 3–5 and 7 for a date rather than a time: the window-days whose queues the entry joins."""
    service = catalog.resolve_service(request["appointment_type"])
    branch = catalog.resolve_branch(request.get("branch_id"))
    settings = catalog.settings
    if not settings.enabled:
        raise DomainError("BOOKING_DISABLED", "online booking is disabled for this organization")
    day: date = request["date"]
    today = local(now, settings.timezone).date()
    if day < today:
        raise DomainError("PAST_APPOINTMENT", "date is in the past", {"date": day.isoformat(),
                                                                      "today": today.isoformat()})
    if day > today + timedelta(days=settings.max_advance_booking_days):
        raise DomainError("BEYOND_BOOKING_HORIZON", f"appointments can be booked at most "
                          f"{settings.max_advance_booking_days} days ahead",
                          {"max_advance_booking_days": settings.max_advance_booking_days, "date": day.isoformat()})
    session = request.get("session")
    windows = [w for w in catalog.windows.values()
               if w.branch_id == branch.branch_id and w.enabled and w.occurs_on(day)
               and w.service_id in (None, service.service_id) and session in (None, w.session)]
    if not windows:
        raise DomainError("OUTSIDE_AVAILABILITY", "no calendar window of this branch runs on that date for this "
                          "appointment type", {"date": day.isoformat(), "session": session})
    streams = tuple(sorted(wd.stream_id(w.window_id, day) for w in windows))
    return WaitlistEntry(waitlist_id=holds.short_id("wl"), appointment_type=service.service_id,
                         branch_id=branch.branch_id, date=day.isoformat(), session=session,
                         patient_name=request["patient_name"], parent_phone=request["parent_phone"],
                         external_reference_id=request.get("external_reference_id"), notes=request.get("notes"),
                         joined_at=iso_utc(now), streams=streams)
