"""Events: plain data, JSON-native fields only, so a stored event is exactly `asdict(event)`."""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class Event:
    type: ClassVar[str]
    version: ClassVar[int] = 1

    def data(self) -> dict[str, Any]:
        # Shallow: the fields are JSON-native and an event is never changed once made (it is frozen, and those
        # who fold it copy what they keep), so asdict's deep copy would only cost time on every write.
        return {name: getattr(self, name) for name in _field_names(type(self))}


@functools.cache
def _field_names(kind: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(kind))


# -- configuration streams: org-<id>, service-<id>, branch-<id>, window-<id> ----------------------------

@dataclass(frozen=True)
class OrgCreated(Event):
    type = "org.created"
    org_id: str
    name: str
    settings: dict[str, Any]


@dataclass(frozen=True)
class OrgSettingsChanged(Event):
    type = "org.settings_changed"
    changes: dict[str, Any]


@dataclass(frozen=True)
class ServiceAdded(Event):
    type = "service.added"
    service_id: str
    name: str
    duration_minutes: int


@dataclass(frozen=True)
class BranchAdded(Event):
    type = "branch.added"
    branch_id: str
    name: str


@dataclass(frozen=True)
class WindowCreated(Event):
    type = "window.created"
    window: dict[str, Any]


@dataclass(frozen=True)
class WindowChanged(Event):
    type = "window.changed"
    window_id: str
    changes: dict[str, Any]


@dataclass(frozen=True)
class WindowDisabled(Event):
    type = "window.disabled"
    window_id: str


@dataclass(frozen=True)
class DoctorRegistered(Event):
    type = "doctor.registered"
    doctor_id: str
    name: str
    specialty: str | None
    branch_ids: list[str]


@dataclass(frozen=True)
class DoctorChanged(Event):
    type = "doctor.changed"
    doctor_id: str
    changes: dict[str, Any]


# -- patient streams: patient-<pat_…> ----------------------------------------------------------------

@dataclass(frozen=True)
class PatientRegistered(Event):
    """The first booking of a patient (one org, phone in E.164, name); appended only if the stream is new."""
    type = "patient.registered"
    patient_id: str
    phone_e164: str
    patient_name: str
    parent_phone: str


# -- window-day streams: wd-<window_id>-<YYYY-MM-DD> --------------------------------------------------

@dataclass(frozen=True)
class WindowDayAdjusted(Event):
    """One date of a window closed, reopened, or given its own capacity."""
    type = "window_day.adjusted"
    window_id: str
    date: str
    status: str | None = None
    max_slots: int | None = None


@dataclass(frozen=True)
class AppointmentBooked(Event):
    type = "appointment.booked"
    appointment: dict[str, Any]
    phone_e164: str | None = None  # the phone as the duplicate rule and patients compare it, at booking time


@dataclass(frozen=True)
class AppointmentRescheduled(Event):
    """In the target window-day; `appointment` is the whole record at its new place."""
    type = "appointment.rescheduled"
    appointment: dict[str, Any]
    previous: dict[str, Any]  # window_id, date, appointment_date, session, batch, token before the move


@dataclass(frozen=True)
class AppointmentMovedOut(Event):
    """In the source window-day when a reschedule leaves it: its capacity is freed."""
    type = "appointment.moved_out"
    appointment_id: str
    to_stream: str
    updated_at: str


@dataclass(frozen=True)
class AppointmentDetailsChanged(Event):
    type = "appointment.details_changed"
    appointment_id: str
    changes: dict[str, Any]
    updated_at: str


@dataclass(frozen=True)
class AppointmentStatusChanged(Event):
    """confirmed/rescheduled → in_progress, completed, cancelled, no_show; `changes` carries what comes with it
    (cancellation_reason, cancelled_at, completed_at, diagnosis…)."""
    type = "appointment.status_changed"
    appointment_id: str
    status: str
    previous_status: str
    changes: dict[str, Any]
    updated_at: str


@dataclass(frozen=True)
class NotificationRequested(Event):
    """The caller asked that the patient be told about this change; a consumer of the events topic sends it."""
    type = "appointment.notification_requested"
    appointment_id: str
    reason: str
    channel_hint: str | None = None


# -- holds and the waitlist, in the window-day they hold a place in (DESIGN §8) ---------------------------

@dataclass(frozen=True)
class HoldPlaced(Event):
    """A place kept for a caller until `hold["expires_at"]`; a waitlist offer when `hold["waitlist_id"]` is set."""
    type = "hold.placed"
    hold: dict[str, Any]


@dataclass(frozen=True)
class HoldConfirmed(Event):
    """The hold became the booking `appointment_id` (whose appointment.booked follows in the same commit)."""
    type = "hold.confirmed"
    hold_id: str
    appointment_id: str
    waitlist_id: str | None = None


@dataclass(frozen=True)
class HoldReleased(Event):
    type = "hold.released"
    hold_id: str
    waitlist_id: str | None = None


@dataclass(frozen=True)
class HoldExpired(Event):
    """Appended by the sweeper; an expired hold stopped counting at `expires_at`, before this event."""
    type = "hold.expired"
    hold_id: str
    waitlist_id: str | None = None


@dataclass(frozen=True)
class WaitlistJoined(Event):
    """In every window-day whose queue the entry joins (`entry["streams"]`), in one commit."""
    type = "waitlist.joined"
    entry: dict[str, Any]


@dataclass(frozen=True)
class WaitlistOffered(Event):
    """A freed place, held for the first waiting entry until `expires_at`: a notifier tells the patient."""
    type = "waitlist.offered"
    waitlist_id: str
    hold_id: str
    expires_at: str
    patient_name: str
    parent_phone: str


@dataclass(frozen=True)
class WaitlistOfferExpired(Event):
    type = "waitlist.offer_expired"
    waitlist_id: str
    hold_id: str


@dataclass(frozen=True)
class WaitlistLeft(Event):
    """The entry leaves this window-day's queue: `left` (the patient asked) or `offered_elsewhere` (another of
    its window-days offered it a place in the same commit)."""
    type = "waitlist.left"
    waitlist_id: str
    reason: str


EVENT_TYPES: dict[str, type[Event]] = {
    cls.type: cls for cls in (
        OrgCreated, OrgSettingsChanged, ServiceAdded, BranchAdded, WindowCreated, WindowChanged, WindowDisabled,
        DoctorRegistered, DoctorChanged, PatientRegistered,
        WindowDayAdjusted, AppointmentBooked, AppointmentRescheduled, AppointmentMovedOut,
        AppointmentDetailsChanged, AppointmentStatusChanged, NotificationRequested,
        HoldPlaced, HoldConfirmed, HoldReleased, HoldExpired,
        WaitlistJoined, WaitlistOffered, WaitlistOfferExpired, WaitlistLeft,
    )
}


def from_stored(event_type: str, data: dict[str, Any]) -> Event:
    return EVENT_TYPES[event_type](**data)
