"""Doctor schedules (SaludYa): an appointment with an assigned doctor occupies that doctor from its start for
`duration_minutes` plus the org's `buffer_time_minutes`, across every window and branch of the org.

The handler reads the doctor's busy times from a write-side table and re-checks them under a per-doctor lock
in the write transaction; the rules here are pure.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Iterable

from domain import events as ev
from domain.appointment import Appointment
from domain.catalog import Catalog
from domain.errors import DomainError
from domain.timerules import iso_utc, local, parse_instant, zone
from domain.windowday import WindowDay, stream_id

SUGGESTION_STEP = timedelta(minutes=15)
SUGGESTIONS = 3
NOT_OCCUPYING = frozenset({"cancelled", "no_show"})


def doctor_key(name: str | None) -> str | None:
    """One doctor however the name is spaced or cased: 'Dr.  Carlos Ramírez' = 'dr. carlos ramírez'."""
    if not name or not name.strip():
        return None
    return " ".join(name.split()).casefold()


@dataclass(frozen=True)
class DoctorTime:
    """The time an appointment holds its doctor: [start, end)."""
    appointment_id: str
    doctor: str
    start: datetime
    end: datetime

    def overlaps(self, other: "DoctorTime") -> bool:
        return (self.doctor == other.doctor and self.appointment_id != other.appointment_id
                and self.start < other.end and other.start < self.end)


def doctor_time(record: Appointment | None, catalog: Catalog) -> DoctorTime | None:
    if record is None or record.status in NOT_OCCUPYING:
        return None
    doctor = record.doctor_id or doctor_key(record.assigned_doctor)  # the id when the doctor is registered
    if doctor is None:
        return None
    start = parse_instant(record.appointment_date)
    minutes = (record.duration_minutes or 0) + catalog.settings.buffer_time_minutes
    return DoctorTime(record.appointment_id, doctor, start, start + timedelta(minutes=minutes))


def record_after(record: Appointment, events: Iterable[ev.Event]) -> Appointment | None:
    """The appointment as `events` (of its home window-day) leave it, without touching any real window-day."""
    scratch = WindowDay(record.window_id, record.date)
    scratch.appointments[record.appointment_id] = record
    for event in events:
        if not isinstance(event, ev.AppointmentMovedOut):
            scratch.apply(event)
    return scratch.appointments.get(record.appointment_id)


def first_clash(wanted: DoctorTime, busy: Iterable[DoctorTime]) -> DoctorTime | None:
    clashes = sorted((b for b in busy if wanted.overlaps(b)), key=lambda b: b.start)
    return clashes[0] if clashes else None


def suggest_times(catalog: Catalog, service_id: str, branch_id: str, wanted: DoctorTime, busy: list[DoctorTime],
                  days: dict[str, WindowDay], now: datetime, limit: int = SUGGESTIONS) -> list[datetime]:
    """The doctor's next free starts on the same local date, every quarter hour after the requested start, that
    a booking would accept: inside an enabled window of the branch open that day with room for the service,
    with enough notice, and clear of the doctor's other appointments. `days` holds the date's window-days."""
    settings = catalog.settings
    tz = zone(settings.timezone)
    length = wanted.end - wanted.start
    start_local = local(wanted.start, settings.timezone)
    the_date = start_local.date()
    earliest = now + timedelta(hours=settings.min_notice_hours)
    wall = start_local.replace(tzinfo=None)
    wall = wall - timedelta(minutes=wall.minute % 15, seconds=wall.second, microseconds=wall.microsecond)
    found: list[datetime] = []
    while len(found) < limit:
        wall += SUGGESTION_STEP
        if wall.date() != the_date:
            break
        moment = wall.replace(tzinfo=tz)
        candidate = DoctorTime(wanted.appointment_id, wanted.doctor, moment, moment + length)
        if candidate.start <= earliest or first_clash(candidate, busy) is not None:
            continue
        if any(_has_room(days.get(stream_id(w.window_id, the_date)), w, service_id, wanted.appointment_id, now)
               for w in catalog.windows_at(branch_id, moment, service_id, None)):
            found.append(candidate.start.astimezone(timezone.utc))
    return found


def _has_room(day: WindowDay | None, window, service_id: str, excluding: str, now: datetime) -> bool:
    if not window.enabled:
        return False
    day = day or WindowDay(window.window_id, "")
    return day.effective_status(window) == "OPEN" and \
        day.booked(service_id, excluding) + day.held(service_id, now, excluding) < day.capacity(window)


def hold_time(hold, catalog: Catalog) -> DoctorTime | None:
    """The time a hold keeps its doctor, as a booking of it would."""
    doctor = catalog.resolve_doctor(hold.assigned_doctor)
    key = doctor.doctor_id if doctor is not None else doctor_key(hold.assigned_doctor)
    if key is None:
        return None
    start = parse_instant(hold.appointment_date)
    service = catalog.services.get(hold.appointment_type)
    minutes = (hold.duration_minutes or (service.duration_minutes if service else 0)) \
        + catalog.settings.buffer_time_minutes
    return DoctorTime(hold.hold_id, key, start, start + timedelta(minutes=minutes))


def conflict(clash: DoctorTime, suggestions: list[datetime]) -> DomainError:
    return DomainError("APPOINTMENT_CONFLICT", "Doctor is not available at the requested time",
                       {"conflicting_appointment_id": clash.appointment_id,
                        "suggested_times": [iso_utc(s) for s in suggestions]})
