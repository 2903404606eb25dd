"""SaludYa's `PUT /api/appointments/:id` request and response (seeds/003), for SaludYa clients unchanged."""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, Field

from schemas.http import ClinicalUpdate, Day, ErrorBody

SaludYaStatus = Literal["scheduled", "confirmed", "in_progress", "completed", "cancelled", "no_show"]


class SaludYaUpdate(ClinicalUpdate):
    NOT_NULL: ClassVar[tuple[str, ...]] = (*ClinicalUpdate.NOT_NULL, "date", "time", "status", "send_notification")
    date: Day | None = Field(default=None, description="New local date, YYYY-MM-DD (org timezone)")
    time: str | None = Field(default=None, pattern=r"^([01]\d|2[0-3]):[0-5]\d$", description="New local time HH:MM")
    status: SaludYaStatus | None = None
    send_notification: bool = Field(default=True, description="SaludYa's default is true")


class SaludYaAppointment(BaseModel):
    id: str
    patient_id: str | None
    patient_name: str
    doctor_id: str | None
    doctor_name: str | None
    specialty: str | None = Field(description="The doctor's specialty when registered, else the service's name")
    date: str
    time: str
    duration_minutes: int | None
    status: SaludYaStatus
    reason: str | None
    notes: str | None
    diagnosis: str | None
    prescription: str | None
    follow_up_required: bool
    follow_up_date: str | None
    created_at: str
    updated_at: str
    completed_at: str | None
    cancelled_at: str | None
    cancellation_reason: str | None


class SaludYaError(BaseModel):
    """SaludYa's error body: no `success` flag; NOT_FOUND is RESOURCE_NOT_FOUND, a missing scope FORBIDDEN."""
    error: ErrorBody
