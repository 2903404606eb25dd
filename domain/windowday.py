"""The window-day aggregate: one calendar window on one local date, and the appointments booked into it.

It decides bookings, reschedules and every later change of an appointment (DESIGN §3). Cross-aggregate
facts it cannot see (an existing appointment with the same external reference or the same phone, type and
date in another window-day) are looked up by the handler and passed in; the handler's unique tables make
them race-free.
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from domain import events as ev
from domain import patients
from domain.appointment import Appointment
from domain.appointment import FIELDS as APPOINTMENT_FIELDS
from domain.hold import ENTRY_FIELDS, HOLD_FIELDS, Hold, WaitlistEntry
from domain.patients import phone_key
from domain.catalog import Branch, Catalog, Service, Window
from domain.errors import DomainError, validation
from domain.timerules import iso_utc, local, parse_instant

TERMINAL = frozenset({"completed", "cancelled", "no_show"})
TRANSITIONS: dict[str, frozenset[str]] = {
    "confirmed": frozenset({"confirmed", "rescheduled", "in_progress", "completed", "cancelled", "no_show"}),
    "rescheduled": frozenset({"confirmed", "rescheduled", "in_progress", "completed", "cancelled", "no_show"}),
    "in_progress": frozenset({"completed"}),
}
STATUSES = ("confirmed", "rescheduled", "in_progress", "completed", "cancelled", "no_show")
DETAIL_FIELDS = ("assigned_doctor", "notes", "reason", "session", "batch", "diagnosis", "prescription",
                 "follow_up_required", "follow_up_date", "duration_minutes")
# SaludYa (seed 003) has no `rescheduled`: to its clients a rescheduled appointment is `scheduled`.
SALUDYA_STATUS = {"rescheduled": "scheduled"}
PATCH_FIELDS = ("appointment_date", "status", "cancellation_reason", "send_notification", *DETAIL_FIELDS)
# What a snapshot's layout depends on: a snapshot of another format is ignored (its day is read from the log).
# Raise the number whenever `apply` folds an event differently, so no snapshot outlives the fold that made it.
SNAPSHOT_FORMAT = "wd1-" + hashlib.sha256(repr((APPOINTMENT_FIELDS, HOLD_FIELDS, ENTRY_FIELDS)).encode()
                                          ).hexdigest()[:12]


def stream_id(window_id: str, day: date | str) -> str:
    return f"wd-{window_id}-{day}"


def split_stream_id(stream: str) -> tuple[str, str]:
    """wd-<window uuid>-<YYYY-MM-DD> → (window id, date)."""
    body = stream[3:]
    return body[:-11], body[-10:]


def is_active(appointment: Appointment | dict[str, Any]) -> bool:
    status = appointment.status if isinstance(appointment, Appointment) else appointment["status"]
    return status != "cancelled"


@dataclass(frozen=True)
class Placement:
    """Where a requested start time lands (rules 4–7 passed): a window on a local date."""
    service: Service
    branch: Branch
    window: Window
    start: datetime
    local_date: date

    @functools.cached_property  # asked many times per decision
    def stream_id(self) -> str:
        return stream_id(self.window.window_id, self.local_date)


@dataclass
class WindowDay:
    window_id: str
    date: str
    version: int = 0
    status: str | None = None  # this date's own OPEN/CLOSED, over the window's default
    max_slots: int | None = None  # this date's own capacity, over the window's
    last_token: int = 0
    phone_region: str | None = None  # the org's, for comparing phones (a cached day is reloaded if it changes)
    appointments: dict[str, Appointment] = field(default_factory=dict)
    holds: dict[str, Hold] = field(default_factory=dict)  # placed and not yet confirmed, released or expired
    waiting: list[WaitlistEntry] = field(default_factory=list)  # the queue, in join order
    # Derived from the active appointments, so a decision never scans the day: who holds which
    # (phone, type), and how many hold each type.
    _holders: dict[tuple[str, str], set[str]] = field(default_factory=dict, repr=False, compare=False)
    _active: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    @functools.cached_property  # asked many times per decision; window and date never change
    def stream_id(self) -> str:
        return stream_id(self.window_id, self.date)

    def apply(self, event: ev.Event) -> None:
        match event:
            case ev.AppointmentBooked() | ev.AppointmentRescheduled():
                record = Appointment.from_dict(event.appointment)
                if getattr(event, "phone_e164", None):  # indexing it below need not parse the phone again
                    patients.learn(record.parent_phone, event.phone_e164)
                self._unindex(self.appointments.get(record.appointment_id))
                self.appointments[record.appointment_id] = record
                self._index(record)
                self.last_token = max(self.last_token, record.token or 0)
            case ev.AppointmentMovedOut():
                self._unindex(self.appointments.pop(event.appointment_id, None))
            case ev.AppointmentDetailsChanged():
                self._touch(event.appointment_id, event.updated_at, event.changes)
            case ev.AppointmentStatusChanged():
                self._touch(event.appointment_id, event.updated_at, {"status": event.status, **event.changes})
            case ev.WindowDayAdjusted():
                if event.status is not None:
                    self.status = event.status
                if event.max_slots is not None:
                    self.max_slots = event.max_slots
            case ev.HoldPlaced():
                hold = Hold.from_dict(event.hold)
                self.holds[hold.hold_id] = hold
                self._dequeue(hold.waitlist_id)
            case ev.HoldConfirmed() | ev.HoldReleased() | ev.HoldExpired():
                self.holds.pop(event.hold_id, None)
            case ev.WaitlistJoined():
                self.waiting.append(WaitlistEntry.from_dict(event.entry))
            case ev.WaitlistOffered() | ev.WaitlistLeft():
                self._dequeue(event.waitlist_id)
        self.version += 1

    def fold(self, events: list[ev.Event]) -> None:
        for event in events:
            self.apply(event)

    # -- snapshots: the day as of `version`, so a fresh process need not fold every event again ----------
    def snapshot(self) -> dict[str, Any]:
        """The whole state as plain JSON: records as arrays (in FIELDS order), and the duplicate rule's index as
        it stands, so loading it parses no phone."""
        return {"version": self.version, "status": self.status, "max_slots": self.max_slots,
                "last_token": self.last_token, "phone_region": self.phone_region,
                "appointments": [list(record) for record in self.appointments.values()],
                "holders": [[phone, service, sorted(ids)] for (phone, service), ids in self._holders.items() if ids],
                "holds": [hold.as_dict() for hold in self.holds.values()],
                "waiting": [entry.as_dict() for entry in self.waiting]}

    @classmethod
    def from_snapshot(cls, stream: str, state: dict[str, Any]) -> "WindowDay":
        day = cls(*split_stream_id(stream), version=state["version"], status=state["status"],
                  max_slots=state["max_slots"], last_token=state["last_token"], phone_region=state["phone_region"])
        make = Appointment._make
        day.appointments = {record.appointment_id: record for record in map(make, state["appointments"])}
        for phone, service, ids in state["holders"]:
            day._holders[(phone, service)] = set(ids)
            day._active[service] = day._active.get(service, 0) + len(ids)
        day.holds = {hold.hold_id: hold for hold in map(Hold.from_dict, state["holds"])}
        day.waiting = [WaitlistEntry.from_dict(entry) for entry in state["waiting"]]
        return day

    def _dequeue(self, waitlist_id: str | None) -> None:
        if waitlist_id is not None:
            self.waiting = [e for e in self.waiting if e.waitlist_id != waitlist_id]

    def _touch(self, appointment_id: str, updated_at: str, changes: dict[str, Any]) -> None:
        record = self.appointments[appointment_id]
        self._unindex(record)
        record = self.appointments[appointment_id] = record.changed(updated_at, **changes)
        self._index(record)

    def _index(self, record: Appointment) -> None:
        if record.active:
            key = (phone_key(record.parent_phone, self.phone_region), record.appointment_type)
            self._holders.setdefault(key, set()).add(record.appointment_id)
            self._active[record.appointment_type] = self._active.get(record.appointment_type, 0) + 1

    def _unindex(self, record: Appointment | None) -> None:
        if record is None or not record.active:
            return
        holders = self._holders.get((phone_key(record.parent_phone, self.phone_region),
                                     record.appointment_type))
        if holders is not None and record.appointment_id in holders:
            holders.discard(record.appointment_id)
            self._active[record.appointment_type] -= 1

    # -- what the day holds --------------------------------------------------------------------------
    def effective_status(self, window: Window) -> str:
        if not window.enabled:
            return "CLOSED"
        return self.status or window.status

    def capacity(self, window: Window) -> int:
        return window.max_slots if self.max_slots is None else self.max_slots

    def booked(self, service_id: str, excluding: str | None = None) -> int:
        count = self._active.get(service_id, 0)
        other = self.appointments.get(excluding) if excluding else None
        if other is not None and other.appointment_type == service_id and other.active:
            count -= 1
        return count

    def held(self, service_id: str, now: datetime, ignoring: str | None = None) -> int:
        """Live holds of the service: an expired one never counts, swept or not."""
        if not self.holds:
            return 0
        return sum(1 for h in self.holds.values()
                   if h.appointment_type == service_id and h.hold_id != ignoring and h.live(now))

    def free(self, window: Window, service_id: str, now: datetime) -> int:
        """Places a new booking or hold of the service could take now."""
        if self.effective_status(window) != "OPEN":
            return 0
        return max(self.capacity(window) - self.booked(service_id) - self.held(service_id, now), 0)

    def hold_of_entry(self, waitlist_id: str) -> Hold | None:
        return next((h for h in self.holds.values() if h.waitlist_id == waitlist_id), None)

    def filled_by_service(self) -> dict[str, int]:
        return {service: n for service, n in self._active.items() if n}

    def duplicate_of(self, phone: str, service_id: str, excluding: str | None = None) -> str | None:
        holders = self._holders.get((phone_key(phone, self.phone_region), service_id))
        if not holders:  # the usual case: no other booking of this phone and type that day
            return None
        return next((a for a in sorted(holders) if a != excluding), None)


# -- rules 5–7: where a start time lands ------------------------------------------------------------------

def place(catalog: Catalog, service: Service, branch: Branch, start: datetime, session: str | None,
          now: datetime) -> Placement:
    settings = catalog.settings
    if not settings.enabled:
        raise DomainError("BOOKING_DISABLED", "online booking is disabled for this organization")
    if start <= now:
        raise DomainError("PAST_APPOINTMENT", "appointment_date is in the past",
                          {"appointment_date": iso_utc(start), "now": iso_utc(now)})
    if start - now < timedelta(hours=settings.min_notice_hours):
        raise DomainError("INSUFFICIENT_NOTICE", f"appointments need at least {settings.min_notice_hours:g} hours' "
                          "notice", {"min_notice_hours": settings.min_notice_hours})
    start_local = local(start, settings.timezone)
    today_local = local(now, settings.timezone).date()
    if start_local.date() > today_local + timedelta(days=settings.max_advance_booking_days):
        raise DomainError("BEYOND_BOOKING_HORIZON", f"appointments can be booked at most "
                          f"{settings.max_advance_booking_days} days ahead",
                          {"max_advance_booking_days": settings.max_advance_booking_days,
                           "local_date": start_local.date().isoformat()})
    windows = catalog.windows_at(branch.branch_id, start_local, service.service_id, session)
    if not windows:
        raise DomainError("OUTSIDE_AVAILABILITY", "appointment_date does not fall within any configured calendar "
                          "window", {"local_time": start_local.strftime("%A %Y-%m-%d %H:%M"),
                                     "timezone": settings.timezone, "session": session})
    # Several windows may cover one moment: prefer one that is open.
    open_first = sorted(windows, key=lambda w: not w.enabled or w.status != "OPEN")
    return Placement(service, branch, open_first[0], start, start_local.date())


def check_bookable(catalog: Catalog, day: WindowDay, placement: Placement, phone: str | None,
                   duplicate_of: str | None, now: datetime, excluding: str | None = None,
                   ignoring_hold: str | None = None) -> None:
    """Rules 8–10 on the target window-day; live holds count against capacity (except `ignoring_hold`, the
    place being confirmed). No phone (a hold may come without one): no duplicate rule."""
    window = placement.window
    if day.effective_status(window) != "OPEN":
        raise DomainError("SLOT_INACTIVE", f"the {window.session} window on {day.date} is closed",
                          {"window_id": window.window_id, "date": day.date, "status": "CLOSED"})
    if catalog.settings.prevent_duplicate_bookings and phone is not None:
        existing = duplicate_of or day.duplicate_of(phone, placement.service.service_id, excluding)
        if existing and existing != excluding:
            raise DomainError("DUPLICATE_BOOKING", "an active appointment already exists for this phone number, "
                              "appointment type and date", {"existing_appointment_id": existing},
                              extra={"existing_appointment_id": existing})
    capacity = day.capacity(window)
    service_id = placement.service.service_id
    if day.booked(service_id, excluding) + day.held(service_id, now, ignoring_hold) >= capacity:
        raise DomainError("SLOT_FULL", f"the {window.session} window on {day.date} has no capacity left for "
                          f"{placement.service.name}", {"window_id": window.window_id, "date": day.date,
                                                        "max_slots": capacity})


def _doctor_name(doctor, given: str | None) -> str | None:
    """A doctor named by id reads as its name; a name is kept as given."""
    return doctor.name if doctor is not None and given == doctor.doctor_id else given


def next_token(catalog: Catalog, day: WindowDay) -> int | None:
    return day.last_token + 1 if catalog.settings.token_numbering else None


def book(catalog: Catalog, day: WindowDay, placement: Placement, request: dict[str, Any], appointment_id: str,
         now: datetime, duplicate_of: str | None = None, ignoring_hold: str | None = None) -> list[ev.Event]:
    """Rules 8–10, then the booking. `request` holds the create body's validated fields."""
    check_bookable(catalog, day, placement, request["parent_phone"], duplicate_of, now, ignoring_hold=ignoring_hold)
    stamp = iso_utc(now)
    window = placement.window
    doctor = catalog.resolve_doctor(request.get("assigned_doctor"))
    record = Appointment(
        appointment_id=appointment_id,
        appointment_type=placement.service.service_id,
        branch_id=placement.branch.branch_id,
        window_id=window.window_id,
        date=placement.local_date.isoformat(),
        session=window.session,
        batch=request.get("batch") or window.batch,
        token=next_token(catalog, day),
        patient_name=request["patient_name"],
        parent_phone=request["parent_phone"],
        assigned_doctor=_doctor_name(doctor, request.get("assigned_doctor")),
        status="confirmed",
        external_reference_id=request.get("external_reference_id"),
        appointment_date=iso_utc(placement.start),
        notes=request.get("notes"),
        reason=request.get("reason"),
        duration_minutes=request.get("duration_minutes") or placement.service.duration_minutes,
        cancellation_reason=None,
        cancelled_at=None,
        completed_at=None,
        diagnosis=None,
        prescription=None,
        follow_up_required=False,
        follow_up_date=None,
        created_at=stamp,
        updated_at=stamp,
        version=1,
        doctor_id=doctor.doctor_id if doctor else None,
        patient_id=patients.patient_id(catalog.org_id, request["parent_phone"], request["patient_name"],
                                       catalog.settings.phone_region),
    )
    return [ev.AppointmentBooked(appointment=record.as_dict(),
                                 phone_e164=phone_key(record.parent_phone, catalog.settings.phone_region))]


# -- PATCH: update, reschedule, cancel, complete -----------------------------------------------------------

def check_update(catalog: Catalog, appointment: Appointment, patch: dict[str, Any], now: datetime,
                 strict: bool = False) -> bool:
    """Transition and policy checks that need no target window-day. Returns False when the request leaves the
    record as it is (the same terminal status again). A status given with a new appointment_date is checked
    as if it came alone, against the appointment as it is. `strict`: a cancellation needs a reason and a
    completion a diagnosis whatever the org's settings (SaludYa's rules)."""
    if not any(name in patch for name in PATCH_FIELDS):
        raise DomainError("VALIDATION_ERROR", "no valid field to update",
                          {"body": "give at least one of " + ", ".join(PATCH_FIELDS)})
    current = appointment.status
    wanted = patch.get("status")
    if current in TERMINAL:
        if wanted == current:
            return False
        raise DomainError("INVALID_STATE_TRANSITION", f"Cannot update a {current} appointment. Contact support if "
                          "you need to make changes.", {"status": current, "requested": wanted or "update"})
    if wanted is not None and wanted != current:
        if wanted not in TRANSITIONS[current]:
            raise DomainError("INVALID_STATE_TRANSITION", f"Cannot change status from '{current}' to '{wanted}'",
                              {"from": current, "to": wanted, "allowed": sorted(TRANSITIONS[current])})
        if wanted == "rescheduled" and "appointment_date" not in patch:
            raise DomainError("INVALID_STATE_TRANSITION", "an appointment becomes 'rescheduled' by a new "
                              "appointment_date", {"appointment_date": "required with status 'rescheduled'"})
    if "appointment_date" in patch:
        if current == "in_progress":
            raise DomainError("INVALID_STATE_TRANSITION", "Cannot reschedule an appointment in progress",
                              {"from": current, "to": "rescheduled"})
        if not catalog.settings.allow_reschedule:
            raise DomainError("RESCHEDULE_NOT_ALLOWED", "rescheduling is disabled for this organization")
    if wanted == "cancelled":
        if not catalog.settings.allow_cancellation:
            raise DomainError("CANCELLATION_NOT_ALLOWED", "cancellation is disabled for this organization")
        start = parse_instant(appointment.appointment_date)
        notice = catalog.settings.cancellation_notice_hours
        if start - now < timedelta(hours=notice):
            raise DomainError("CANCELLATION_NOTICE_TOO_SHORT", f"appointments can be cancelled at most {notice:g} "
                              "hours before they start", {"cancellation_notice_hours": notice,
                                                          "appointment_date": appointment.appointment_date})
        if (strict or catalog.settings.require_cancellation_reason) and not patch.get("cancellation_reason"):
            raise DomainError("VALIDATION_ERROR", "Invalid request data",
                              {"cancellation_reason": "is required when status is set to cancelled"})
    if wanted == "completed" and (strict or catalog.settings.require_diagnosis_on_complete) and not (
            patch.get("diagnosis") or appointment.diagnosis):
        raise DomainError("VALIDATION_ERROR", "Invalid request data",
                          {"diagnosis": "Cannot change status to 'completed' without providing diagnosis"})
    return True


def saludya_status(status: str) -> str:
    return SALUDYA_STATUS.get(status, status)


def from_saludya_status(current: str, wanted: str) -> str | None:
    """The status a SaludYa request asks for, in our words; None when it asks for what the appointment already
    is (a rescheduled appointment is `scheduled` to SaludYa). Nothing can go (back) to `scheduled`; a scheduled
    appointment can become confirmed."""
    if wanted != "scheduled":
        return wanted
    if current == "rescheduled":
        return None
    raise DomainError("INVALID_STATE_TRANSITION", f"Cannot change status from '{saludya_status(current)}' to "
                      "'scheduled'", {"from": saludya_status(current), "to": "scheduled"})


def reschedule_placement(catalog: Catalog, appointment: Appointment, patch: dict[str, Any],
                         now: datetime) -> Placement:
    """Rules 6–7 for the new appointment_date, keeping the appointment's type and branch."""
    start = parse_instant(patch["appointment_date"])
    service = catalog.services[appointment.appointment_type]
    branch = catalog.branches[appointment.branch_id]
    return place(catalog, service, branch, start, patch.get("session"), now)


def update(catalog: Catalog, source: WindowDay, appointment_id: str, patch: dict[str, Any], now: datetime,
           target: WindowDay | None = None, placement: Placement | None = None,
           duplicate_of: str | None = None) -> dict[str, list[ev.Event]]:
    """Events per stream id for a PATCH (already passed `check_update`). `target` and `placement` are given
    when the patch reschedules; `target` is `source` itself when the new time is in the same window-day."""
    appointment = source.appointments[appointment_id]
    stamp = iso_utc(now)
    out: dict[str, list[ev.Event]] = {}
    home = source
    if placement is not None:
        assert target is not None
        check_bookable(catalog, target, placement, appointment.parent_phone, duplicate_of, now,
                       excluding=appointment_id)
        same_day = target.stream_id == source.stream_id
        window = placement.window
        moved = appointment.changed(
            stamp, window_id=window.window_id, date=placement.local_date.isoformat(),
            appointment_date=iso_utc(placement.start), session=patch.get("session") or window.session,
            batch=patch.get("batch") or window.batch,
            token=appointment.token if same_day else next_token(catalog, target),
            status="confirmed" if patch.get("status") == "confirmed" else "rescheduled")
        previous = {k: getattr(appointment, k) for k in ("window_id", "date", "appointment_date", "session",
                                                         "batch", "token", "status")}
        if not same_day:
            out[source.stream_id] = [ev.AppointmentMovedOut(appointment_id=appointment_id,
                                                             to_stream=target.stream_id, updated_at=stamp)]
        out.setdefault(target.stream_id, []).append(ev.AppointmentRescheduled(appointment=moved.as_dict(), previous=previous))
        appointment, home = moved, target

    home_events = out.setdefault(home.stream_id, [])
    details = {name: patch[name] for name in DETAIL_FIELDS
               if name in patch and not (placement is not None and name in ("session", "batch"))
               and patch[name] != getattr(appointment, name)}
    if "assigned_doctor" in details:
        doctor = catalog.resolve_doctor(details["assigned_doctor"])
        details["assigned_doctor"] = _doctor_name(doctor, details["assigned_doctor"])
        if (doctor.doctor_id if doctor else None) != appointment.doctor_id:
            details["doctor_id"] = doctor.doctor_id if doctor else None
    if details:
        home_events.append(ev.AppointmentDetailsChanged(appointment_id=appointment_id, changes=details,
                                                        updated_at=stamp))
    wanted = patch.get("status")
    if wanted is not None and wanted != appointment.status:  # after a move too: the given status wins
        changes: dict[str, Any] = {}
        if wanted == "cancelled":
            changes = {"cancelled_at": stamp, "cancellation_reason": patch.get("cancellation_reason")}
        elif wanted == "completed":
            changes = {"completed_at": stamp}
        home_events.append(ev.AppointmentStatusChanged(appointment_id=appointment_id, status=wanted,
                                                       previous_status=appointment.status, changes=changes,
                                                       updated_at=stamp))
    if patch.get("send_notification") and home_events:
        home_events.append(ev.NotificationRequested(appointment_id=appointment_id,
                                                    reason=home_events[-1].type))
    return {stream: events for stream, events in out.items() if events}


def adjust_day(day: WindowDay, status: str | None, max_slots: int | None) -> list[ev.Event]:
    """Close or reopen one date, or give it its own capacity (schedule tracking PATCH)."""
    if status is None and max_slots is None:
        raise DomainError("VALIDATION_ERROR", "no valid field to update", {"body": "give status or max_slots"})
    if status is not None and status not in ("OPEN", "CLOSED"):
        raise validation("status", "must be OPEN or CLOSED")
    if max_slots is not None and max_slots < 0:
        raise validation("max_slots", "must not be negative")
    if status == day.status and max_slots in (None, day.max_slots):
        return []
    return [ev.WindowDayAdjusted(window_id=day.window_id, date=day.date, status=status, max_slots=max_slots)]
