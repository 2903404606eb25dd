"""The payload (`data`) of every event type, versioned. The JSON Schemas consumers get are generated from these
models (`slotledger schemas export`), and a test holds them to what the domain actually writes."""
from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas import http
from schemas.http import AppointmentRecord, GeneralSettings, Session, SettingsPatch, Status, UpdateDoctor, UpdateWindow, \
    WindowOut


class Payload(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OrgCreated(Payload):
    org_id: str
    name: str
    settings: GeneralSettings


class OrgSettingsChanged(Payload):
    changes: SettingsPatch


class ServiceAdded(Payload):
    service_id: str
    name: str
    duration_minutes: int


class BranchAdded(Payload):
    branch_id: str
    name: str


class WindowCreated(Payload):
    window: WindowOut


class WindowChanged(Payload):
    window_id: str
    changes: UpdateWindow


class WindowDisabled(Payload):
    window_id: str


class DoctorRegistered(Payload):
    doctor_id: str
    name: str
    specialty: str | None
    branch_ids: list[str]


class DoctorChanged(Payload):
    doctor_id: str
    changes: UpdateDoctor


class PatientRegistered(Payload):
    """A patient's first booking: one org, phone (E.164) and name. On the stream patient-<patient_id>."""
    patient_id: str
    phone_e164: str
    patient_name: str
    parent_phone: str = Field(description="As first sent")


class WindowDayAdjusted(Payload):
    """One date of a window closed, reopened, or given its own capacity."""
    window_id: str
    date: dt.date
    status: Literal["OPEN", "CLOSED"] | None = None
    max_slots: int | None = None


class AppointmentBooked(Payload):
    appointment: AppointmentRecord
    phone_e164: str | None = Field(default=None, description="The phone as compared (E.164), at booking time")


class PreviousPlace(Payload):
    window_id: str
    date: dt.date
    appointment_date: str
    session: Session
    batch: str | None
    token: int | None
    status: Status


class AppointmentRescheduled(Payload):
    """Appended to the target window-day; `appointment` is the whole record at its new place."""
    appointment: AppointmentRecord
    previous: PreviousPlace


class AppointmentMovedOut(Payload):
    """Appended to the source window-day when a reschedule leaves it: its capacity is freed there."""
    appointment_id: str
    to_stream: str
    updated_at: str


class DetailChanges(Payload):
    assigned_doctor: str | None = None
    doctor_id: str | None = None
    notes: str | None = None
    reason: str | None = None
    session: Session | None = None
    batch: str | None = None
    diagnosis: str | None = None
    prescription: str | None = None
    follow_up_required: bool | None = None
    follow_up_date: dt.date | None = None
    duration_minutes: int | None = None


class AppointmentDetailsChanged(Payload):
    appointment_id: str
    changes: DetailChanges
    updated_at: str


class StatusChanges(Payload):
    cancellation_reason: str | None = None
    cancelled_at: str | None = None
    completed_at: str | None = None


class AppointmentStatusChanged(Payload):
    appointment_id: str
    status: Status
    previous_status: Status
    changes: StatusChanges
    updated_at: str


class NotificationRequested(Payload):
    """The caller asked (`send_notification`) that the patient be told of this change; a consumer sends it."""
    appointment_id: str
    reason: str = Field(description="The event type that prompted it, e.g. appointment.status_changed")
    channel_hint: str | None = None


class HoldRecord(http.HoldRecord):
    """A hold as the window-day keeps it."""
    model_config = ConfigDict(extra="forbid")


class HoldPlaced(Payload):
    hold: HoldRecord


class HoldConfirmed(Payload):
    hold_id: str
    appointment_id: str = Field(description="The booking; its appointment.booked follows in the same commit")
    waitlist_id: str | None = None


class HoldEnded(Payload):
    hold_id: str
    waitlist_id: str | None = None


class WaitlistEntryRecord(http.WaitlistEntryRecord):
    """A waitlist entry as its window-days keep it."""
    model_config = ConfigDict(extra="forbid")


class WaitlistJoined(Payload):
    entry: WaitlistEntryRecord


class WaitlistOffered(Payload):
    """A freed place held for the first waiting entry: tell the patient (`parent_phone`)."""
    waitlist_id: str
    hold_id: str
    expires_at: str
    patient_name: str
    parent_phone: str


class WaitlistOfferExpired(Payload):
    waitlist_id: str
    hold_id: str


class WaitlistLeft(Payload):
    waitlist_id: str
    reason: Literal["left", "offered_elsewhere"]


# Event type → (schema version → payload model). A new version of a payload is added here, never edited.
EVENT_PAYLOADS: dict[str, dict[int, type[Payload]]] = {
    "org.created": {1: OrgCreated},
    "org.settings_changed": {1: OrgSettingsChanged},
    "service.added": {1: ServiceAdded},
    "doctor.registered": {1: DoctorRegistered},
    "doctor.changed": {1: DoctorChanged},
    "patient.registered": {1: PatientRegistered},
    "branch.added": {1: BranchAdded},
    "window.created": {1: WindowCreated},
    "window.changed": {1: WindowChanged},
    "window.disabled": {1: WindowDisabled},
    "window_day.adjusted": {1: WindowDayAdjusted},
    "appointment.booked": {1: AppointmentBooked},
    "appointment.rescheduled": {1: AppointmentRescheduled},
    "appointment.moved_out": {1: AppointmentMovedOut},
    "appointment.details_changed": {1: AppointmentDetailsChanged},
    "appointment.status_changed": {1: AppointmentStatusChanged},
    "appointment.notification_requested": {1: NotificationRequested},
    "hold.placed": {1: HoldPlaced},
    "hold.confirmed": {1: HoldConfirmed},
    "hold.released": {1: HoldEnded},
    "hold.expired": {1: HoldEnded},
    "waitlist.joined": {1: WaitlistJoined},
    "waitlist.offered": {1: WaitlistOffered},
    "waitlist.offer_expired": {1: WaitlistOfferExpired},
    "waitlist.left": {1: WaitlistLeft},
}


def cloud_type(event_type: str, version: int) -> str:
    """`appointment.booked`, v1 → `slotledger.appointment.booked.v1`."""
    return f"slotledger.{event_type}.v{version}"
