"""HTTP request and response bodies. Unknown fields are refused, with the field named."""
from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator
from pydantic_core import PydanticCustomError

from domain.timerules import DAY_FORM as _DAY, YEARS

Session = Literal["Morning", "Afternoon", "Evening"]
DayOfWeek = Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
Status = Literal["confirmed", "rescheduled", "in_progress", "completed", "cancelled", "no_show"]
_HHMM = r"^([01]\d|2[0-3]):[0-5]\d$"


# The document's pattern carries the year range as well as the form, so that a client validating against it
# refuses what the service would (tests/unit/test_contracts.py holds it to YEARS).
DOCUMENTED_DAY = r"^2[01]\d{2}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])$"
POSITION = Field(default=None, ge=0, le=2**63 - 1)


def _day(value: Any) -> Any:
    """YYYY-MM-DD and nothing else: no ISO basic (20261202) or week (2026-W48-3) forms, no timestamps."""
    if isinstance(value, dt.date):
        return value
    if not isinstance(value, str) or not _DAY.match(value):
        raise ValueError("must be a date YYYY-MM-DD")
    day = dt.date.fromisoformat(value)
    if not YEARS[0] <= day.year <= YEARS[1]:
        raise ValueError(f"must be between years {YEARS[0]} and {YEARS[1]}")
    return day


Day = Annotated[dt.date, BeforeValidator(_day),
                WithJsonSchema({"type": "string", "format": "date", "pattern": DOCUMENTED_DAY,
                                "description": f"YYYY-MM-DD, a year from {YEARS[0]} to {YEARS[1]}"})]


class Strict(BaseModel):
    """Unknown fields are refused; `NOT_NULL` fields may be left out but not set to null."""
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    NOT_NULL: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name in cls.NOT_NULL:
                if name in data and data[name] is None:
                    raise PydanticCustomError("not_null", "{field} must not be null", {"field": name})
        return data


class Changes(Strict):
    """A PATCH body: any subset of its fields, but at least one."""
    model_config = ConfigDict(json_schema_extra={"minProperties": 1})


class CreateAppointment(Strict):
    appointment_type: str = Field(min_length=1, description="Service UUID or name (case-insensitive)")
    appointment_date: str = Field(min_length=1, description="ISO 8601 datetime with a time part; no offset = UTC",
                                  examples=["2026-06-15T09:30:00.000Z"])
    patient_name: str = Field(min_length=1, max_length=200)
    parent_phone: str = Field(min_length=1, max_length=40)
    branch_id: str | None = None
    session: Session | None = None
    batch: str | None = Field(default=None, max_length=40)
    assigned_doctor: str | None = Field(default=None, max_length=200)
    external_reference_id: str | None = Field(default=None, min_length=1, max_length=200)
    notes: str | None = Field(default=None, max_length=4000)
    reason: str | None = Field(default=None, max_length=1000, description="Why the patient is coming (SaludYa)")
    duration_minutes: int | None = Field(default=None, gt=0, le=1440)


class ClinicalUpdate(Changes):
    """The visit's fields an update may set: shared by PATCH /v1/appointments/{id} and SaludYa's PUT."""
    NOT_NULL: ClassVar[tuple[str, ...]] = ("duration_minutes", "follow_up_required")
    duration_minutes: int | None = Field(default=None, gt=0, le=1440)
    reason: str | None = Field(default=None, max_length=1000)
    notes: str | None = Field(default=None, max_length=4000)
    diagnosis: str | None = Field(default=None, max_length=4000)
    prescription: str | None = Field(default=None, max_length=4000)
    follow_up_required: bool | None = None
    follow_up_date: Day | None = None
    cancellation_reason: str | None = Field(default=None, max_length=1000)


class UpdateAppointment(ClinicalUpdate):
    NOT_NULL: ClassVar[tuple[str, ...]] = (*ClinicalUpdate.NOT_NULL, "appointment_date", "status", "send_notification")
    appointment_date: str | None = Field(default=None, min_length=1)
    status: Status | None = None
    assigned_doctor: str | None = Field(default=None, max_length=200)
    session: Session | None = None
    batch: str | None = Field(default=None, max_length=40)
    send_notification: bool | None = None


class AppointmentRecord(BaseModel):
    """An appointment as the log and the read model hold it."""
    appointment_id: str = Field(pattern=r"^appt_[a-z0-9]{10}$")
    appointment_type: str
    branch_id: str
    window_id: str
    date: dt.date
    session: Session
    batch: str | None
    token: int | None
    patient_name: str
    parent_phone: str
    assigned_doctor: str | None
    status: Status
    external_reference_id: str | None
    appointment_date: str
    notes: str | None
    reason: str | None = None
    duration_minutes: int | None
    cancellation_reason: str | None
    cancelled_at: str | None
    completed_at: str | None
    diagnosis: str | None
    prescription: str | None
    follow_up_required: bool
    follow_up_date: str | None
    created_at: str
    updated_at: str
    version: int
    doctor_id: str | None = Field(default=None, description="doc_…, when assigned_doctor names a registered doctor")
    patient_id: str | None = Field(default=None, description="pat_…: one org, phone (E.164) and patient name")


class Appointment(AppointmentRecord):
    position: int | None = Field(default=None, description="Log position of this write (write responses only)")


class GeneralSettings(BaseModel):
    enabled: bool
    timezone: str
    buffer_time_minutes: int
    max_advance_booking_days: int
    min_notice_hours: float
    allow_reschedule: bool
    allow_cancellation: bool
    cancellation_notice_hours: float
    prevent_duplicate_bookings: bool
    token_numbering: bool
    require_cancellation_reason: bool
    require_diagnosis_on_complete: bool
    phone_region: str | None = None
    waitlist_offer_minutes: int = 15


class SettingsPatch(Changes):
    NOT_NULL: ClassVar[tuple[str, ...]] = ("enabled", "timezone", "buffer_time_minutes", "max_advance_booking_days",
                                           "min_notice_hours", "allow_reschedule", "allow_cancellation",
                                           "cancellation_notice_hours", "prevent_duplicate_bookings",
                                           "token_numbering", "require_cancellation_reason",
                                           "require_diagnosis_on_complete", "waitlist_offer_minutes")
    enabled: bool | None = None
    timezone: str | None = None
    buffer_time_minutes: int | None = Field(default=None, ge=0, le=1440)
    max_advance_booking_days: int | None = Field(default=None, ge=1, le=3650)
    min_notice_hours: float | None = Field(default=None, ge=0, le=8760, allow_inf_nan=False)
    allow_reschedule: bool | None = None
    allow_cancellation: bool | None = None
    cancellation_notice_hours: float | None = Field(default=None, ge=0, le=8760, allow_inf_nan=False)
    prevent_duplicate_bookings: bool | None = None
    token_numbering: bool | None = None
    require_cancellation_reason: bool | None = None
    require_diagnosis_on_complete: bool | None = None
    phone_region: str | None = Field(default=None, pattern=r"^[A-Z]{2}$",
                                     description="ISO 3166-1 alpha-2: how national phone numbers are read")
    waitlist_offer_minutes: int | None = Field(default=None, ge=1, le=1440,
                                               description="How long a freed place is held for the first waiting "
                                               "entry")


class CreateService(Strict):
    name: str = Field(min_length=1, max_length=200)
    duration_minutes: int = Field(default=30, gt=0, le=1440)


class ServiceOut(BaseModel):
    service_id: str
    name: str
    duration_minutes: int


class CreateDoctor(Strict):
    name: str = Field(min_length=1, max_length=200)
    specialty: str | None = Field(default=None, max_length=200)
    branch_ids: list[str] = Field(default_factory=list, max_length=100)


class UpdateDoctor(Changes):
    NOT_NULL: ClassVar[tuple[str, ...]] = ("name", "branch_ids")
    name: str | None = Field(default=None, min_length=1, max_length=200)
    specialty: str | None = Field(default=None, max_length=200)
    branch_ids: list[str] | None = Field(default=None, max_length=100)


class DoctorOut(BaseModel):
    doctor_id: str
    name: str
    specialty: str | None
    branch_ids: list[str]


class PatientOut(BaseModel):
    patient_id: str
    phone: str = Field(description="E.164 where it parses")
    patient_name: str
    parent_phone: str = Field(description="As first sent")


class PatientQuery(Strict):
    phone: str = Field(min_length=1, max_length=40)


class PatientAppointmentsQuery(Strict):
    limit: int = Field(default=50, ge=1, le=200)
    cursor: str | None = None


class CreateBranch(Strict):
    name: str = Field(min_length=1, max_length=200)


class BranchOut(BaseModel):
    branch_id: str
    name: str


class CreateWindow(Strict):
    branch_id: str
    day_of_week: DayOfWeek
    session: Session
    start_time: str = Field(pattern=_HHMM, examples=["09:00"])
    end_time: str = Field(pattern=_HHMM, examples=["12:00"])
    max_slots: int = Field(ge=0, le=100_000)
    service_id: str | None = None
    batch: str | None = Field(default=None, max_length=40)
    status: Literal["OPEN", "CLOSED"] = "OPEN"


class UpdateWindow(Changes):
    NOT_NULL: ClassVar[tuple[str, ...]] = ("start_time", "end_time", "max_slots", "status")
    start_time: str | None = Field(default=None, pattern=_HHMM)
    end_time: str | None = Field(default=None, pattern=_HHMM)
    max_slots: int | None = Field(default=None, ge=0, le=100_000)
    batch: str | None = Field(default=None, max_length=40)
    status: Literal["OPEN", "CLOSED"] | None = None


class WindowOut(BaseModel):
    window_id: str
    branch_id: str
    day_of_week: DayOfWeek
    session: Session
    start_time: str
    end_time: str
    max_slots: int
    service_id: str | None
    batch: str | None
    status: Literal["OPEN", "CLOSED"]
    enabled: bool


class UpdateWindowDay(Changes):
    NOT_NULL: ClassVar[tuple[str, ...]] = ("status", "max_slots")
    status: Literal["OPEN", "CLOSED"] | None = None
    max_slots: int | None = Field(default=None, ge=0, le=100_000)


class Regenerate(Strict):
    date_from: Day
    date_to: Day


class TrackingRecord(BaseModel):
    window_id: str
    branch_id: str
    date: dt.date
    session: Session
    batch: str | None
    start_time: str
    end_time: str
    service_id: str | None
    status: Literal["OPEN", "CLOSED"]
    max_slots: int
    filled_count: int
    filled_by_service: dict[str, int]


class AvailabilityQuery(Strict):
    date: Day
    branch_id: str | None = None
    appointment_type: str | None = None
    session: Session | None = None
    min_position: int | None = POSITION


class TrackingQuery(Strict):
    date_from: Day
    date_to: Day
    branch_id: str | None = None
    window_id: str | None = None
    min_position: int | None = POSITION


class WindowsQuery(Strict):
    branch_id: str | None = None


class SearchQuery(Strict):
    date: Day | None = None
    date_from: Day | None = None
    date_to: Day | None = None
    branch_id: str | None = None
    status: Status | None = None
    parent_phone: str | None = None
    assigned_doctor: str | None = None
    appointment_type: str | None = None
    external_reference_id: str | None = None
    limit: int = Field(default=50, ge=1, le=200)
    cursor: str | None = None
    min_position: int | None = POSITION


class ReadQuery(Strict):
    min_position: int | None = POSITION


class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict[str, Any] = {}


class ErrorResponse(BaseModel):
    success: Literal[False] = False
    error: ErrorBody


# -- holds and the waitlist (DESIGN §8) -------------------------------------------------------------------

HoldStatus = Literal["held", "confirmed", "released", "expired"]
EntryStatus = Literal["waiting", "offered", "booked", "declined", "expired", "left"]


class CreateHold(CreateAppointment):
    """The create body, patient fields optional, and how long to keep the place."""
    patient_name: str | None = Field(default=None, min_length=1, max_length=200)
    parent_phone: str | None = Field(default=None, min_length=1, max_length=40,
                                     description="When given, the duplicate rule applies to the hold")
    hold_minutes: int = Field(default=5, ge=1, le=30)


class ConfirmHold(Strict):
    """Patient fields the hold was placed without (or corrections); the create's idempotency by reference."""
    patient_name: str | None = Field(default=None, min_length=1, max_length=200)
    parent_phone: str | None = Field(default=None, min_length=1, max_length=40)
    external_reference_id: str | None = Field(default=None, min_length=1, max_length=200)
    notes: str | None = Field(default=None, max_length=4000)
    reason: str | None = Field(default=None, max_length=1000)


class HoldRecord(BaseModel):
    """A hold as its window-day keeps it (the payload of hold.placed)."""
    hold_id: str = Field(pattern=r"^hold_[a-z0-9]{10}$")
    appointment_type: str
    branch_id: str
    window_id: str
    date: dt.date
    session: Session
    appointment_date: str
    expires_at: str
    created_at: str
    patient_name: str | None
    parent_phone: str | None
    assigned_doctor: str | None
    duration_minutes: int | None
    external_reference_id: str | None
    notes: str | None
    reason: str | None
    batch: str | None
    waitlist_id: str | None = Field(description="Set when the hold is a waitlist offer")


class HoldOut(HoldRecord):
    status: HoldStatus = Field(description="`expired` from expires_at on, even before the sweeper records it")
    appointment_id: str | None = Field(description="The booking a confirmed hold became")


class JoinWaitlist(Strict):
    appointment_type: str = Field(min_length=1, description="Service UUID or name (case-insensitive)")
    date: Day = Field(description="The local date wanted")
    patient_name: str = Field(min_length=1, max_length=200)
    parent_phone: str = Field(min_length=1, max_length=40)
    branch_id: str | None = None
    session: Session | None = Field(default=None, description="Only this session's window; else every window")
    external_reference_id: str | None = Field(default=None, min_length=1, max_length=200,
                                              description="A second join with a waiting reference returns the first")
    notes: str | None = Field(default=None, max_length=4000)


class WaitlistEntryRecord(BaseModel):
    """A waitlist entry as its window-days keep it (the payload of waitlist.joined)."""
    waitlist_id: str = Field(pattern=r"^wl_[a-z0-9]{10}$")
    appointment_type: str
    branch_id: str
    date: dt.date
    session: Session | None
    patient_name: str
    parent_phone: str
    external_reference_id: str | None
    notes: str | None
    joined_at: str
    streams: list[str] = Field(description="The window-days whose queues the entry joined")


class WaitlistOut(WaitlistEntryRecord):
    status: EntryStatus
    position: int | None = Field(description="1 = next in line; null once no longer waiting")
    window_ids: list[str]
    hold_id: str | None = Field(description="The hold of the place offered")
    offer_expires_at: str | None
    appointment_id: str | None = Field(description="The booking a confirmed offer became")


class WaitlistQuery(Strict):
    date: Day
    branch_id: str | None = None
    appointment_type: str | None = None
    status: EntryStatus | None = None


# -- webhooks (DESIGN §9) ------------------------------------------------------------------------------------

WebhookStatus = Literal["enabled", "disabled"]


class CreateWebhook(Strict):
    url: str = Field(min_length=8, max_length=2000, description="https (http to private addresses only with "
                     "SLOTLEDGER_WEBHOOKS_ALLOW_PRIVATE)")
    event_types: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(
        default_factory=lambda: ["*"], min_length=1, max_length=50,
        description="Event types (appointment.booked), families (appointment.*) or *")
    description: str | None = Field(default=None, max_length=500)


class UpdateWebhook(Changes):
    NOT_NULL: ClassVar[tuple[str, ...]] = ("url", "event_types", "status")
    url: str | None = Field(default=None, min_length=8, max_length=2000)
    event_types: list[Annotated[str, Field(min_length=1, max_length=100)]] | None = Field(
        default=None, min_length=1, max_length=50)
    description: str | None = Field(default=None, max_length=500)
    status: WebhookStatus | None = Field(default=None, description="enabled again after being disabled")


class WebhookOut(BaseModel):
    webhook_id: str
    url: str
    event_types: list[str]
    description: str | None
    status: Literal["enabled", "disabled", "deleted"]
    disabled_reason: str | None
    failing_since: str | None
    created_at: str
    updated_at: str
    previous_valid_until: str | None = Field(description="After a rotation: until when the previous secret signs too")
    secret: str | None = Field(default=None, description="Only when created or rotated: shown once")


class AttemptOut(BaseModel):
    attempt: int
    at: str
    status_code: int | None
    duration_ms: int
    error: str | None


class DeliveryOut(BaseModel):
    delivery_id: int
    webhook_id: str
    event_id: str = Field(description="The webhook-id header, the same on every attempt")
    event_type: str
    status: Literal["pending", "delivered", "failed"]
    attempts: list[AttemptOut]
    next_attempt_at: str | None
    last_status_code: int | None
    last_error: str | None
    created_at: str
    delivered_at: str | None


class DeliveriesQuery(Strict):
    status: Literal["pending", "delivered", "failed"] | None = None
    limit: int = Field(default=50, ge=1, le=200)
    before: int | None = Field(default=None, ge=1, le=2**63 - 1, description="delivery_id to page back from")
