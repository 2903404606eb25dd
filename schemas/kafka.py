"""What crosses Kafka: the command envelope, the command result, the dead-letter headers and the CloudEvents
envelope of the events topic (DESIGN §5). A command's payload is the same body the HTTP API takes."""
from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from schemas.http import ConfirmHold, CreateAppointment, CreateHold, CreateWindow, Day, ErrorBody, JoinWaitlist, \
    Strict, UpdateAppointment, UpdateWindow, UpdateWindowDay


# -- commands: <prefix>.commands ---------------------------------------------------------------------------

class CancelAppointment(Strict):
    """PATCH with `status: cancelled` and what may come with it."""
    cancellation_reason: str | None = Field(default=None, max_length=1000)
    notes: str | None = Field(default=None, max_length=4000)
    send_notification: bool | None = None


class CompleteAppointment(Strict):
    """PATCH with `status: completed` and the clinical fields that may come with it."""
    diagnosis: str | None = Field(default=None, max_length=4000)
    prescription: str | None = Field(default=None, max_length=4000)
    follow_up_required: bool | None = None
    follow_up_date: Day | None = None
    duration_minutes: int | None = Field(default=None, gt=0, le=1440)
    notes: str | None = Field(default=None, max_length=4000)
    send_notification: bool | None = None


class NoPayload(Strict):
    pass


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid")
    command_id: uuid.UUID = Field(description="Chosen by the producer; a repeated command_id has no second effect")
    org_id: uuid.UUID


class CreateAppointmentCommand(_Envelope):
    type: Literal["create_appointment"]
    payload: CreateAppointment


class UpdateAppointmentCommand(_Envelope):
    """Update, reschedule, cancel or complete: the body of PATCH /v1/appointments/{id}."""
    type: Literal["update_appointment"]
    appointment_id: str
    payload: UpdateAppointment


class CancelAppointmentCommand(_Envelope):
    type: Literal["cancel_appointment"]
    appointment_id: str
    payload: CancelAppointment = Field(default_factory=CancelAppointment)


class CompleteAppointmentCommand(_Envelope):
    type: Literal["complete_appointment"]
    appointment_id: str
    payload: CompleteAppointment = Field(default_factory=CompleteAppointment)


class CreateWindowCommand(_Envelope):
    """POST /v1/appointment-slots."""
    type: Literal["create_window"]
    payload: CreateWindow


class UpdateWindowCommand(_Envelope):
    """PATCH /v1/appointment-slots/{window_id}."""
    type: Literal["update_window"]
    window_id: str
    payload: UpdateWindow


class DisableWindowCommand(_Envelope):
    """POST /v1/appointment-slots/{window_id}/disable."""
    type: Literal["disable_window"]
    window_id: str
    payload: NoPayload = Field(default_factory=NoPayload)


class UpdateWindowDayCommand(_Envelope):
    """PATCH /v1/schedule-tracking/{window_id}/{date}: close/reopen one date or override its capacity."""
    type: Literal["update_window_day"]
    window_id: str
    date: Day
    payload: UpdateWindowDay


class CreateHoldCommand(_Envelope):
    """POST /v1/appointment-holds."""
    type: Literal["create_hold"]
    payload: CreateHold


class ConfirmHoldCommand(_Envelope):
    """POST /v1/appointment-holds/{hold_id}/confirm."""
    type: Literal["confirm_hold"]
    hold_id: str
    payload: ConfirmHold = Field(default_factory=ConfirmHold)


class ReleaseHoldCommand(_Envelope):
    """DELETE /v1/appointment-holds/{hold_id}."""
    type: Literal["release_hold"]
    hold_id: str
    payload: NoPayload = Field(default_factory=NoPayload)


class JoinWaitlistCommand(_Envelope):
    """POST /v1/waitlist."""
    type: Literal["join_waitlist"]
    payload: JoinWaitlist


class LeaveWaitlistCommand(_Envelope):
    """DELETE /v1/waitlist/{waitlist_id}."""
    type: Literal["leave_waitlist"]
    waitlist_id: str
    payload: NoPayload = Field(default_factory=NoPayload)


_COMMANDS = (CreateAppointmentCommand, UpdateAppointmentCommand, CancelAppointmentCommand,
             CompleteAppointmentCommand, CreateWindowCommand, UpdateWindowCommand, DisableWindowCommand,
             UpdateWindowDayCommand, CreateHoldCommand, ConfirmHoldCommand, ReleaseHoldCommand,
             JoinWaitlistCommand, LeaveWaitlistCommand)
Command = Annotated[Union[_COMMANDS], Field(discriminator="type")]
COMMAND = TypeAdapter(Command)
COMMAND_TYPES: tuple[str, ...] = tuple(c.model_fields["type"].annotation.__args__[0] for c in _COMMANDS)


# -- results: <prefix>.command-results ---------------------------------------------------------------------

class CommandResult(BaseModel):
    """One per command, keyed by command_id. `status` is what the HTTP API would have answered."""
    command_id: uuid.UUID
    ok: bool
    status: int
    data: Any = None
    error: ErrorBody | None = None
    position: int | None = Field(default=None, description="Log position of the command's last event; null when "
                                 "it wrote nothing")
    idempotent: bool = False
    extra: dict[str, Any] = Field(default_factory=dict, description="Top-level error fields, e.g. "
                                  "existing_appointment_id of DUPLICATE_BOOKING")

    @staticmethod
    def ok_body(command_id: str | uuid.UUID, status: int, data: Any, position: int | None,
                idempotent: bool = False) -> dict[str, Any]:
        """A success's body, built directly on the hot paths: `data` is already JSON (an API answer), so there
        is nothing to validate or convert. tests/unit/test_kafka_results.py holds it to the model."""
        body = {"command_id": str(command_id), "ok": True, "status": status, "data": data, "position": position}
        if idempotent:
            body["idempotent"] = True
        return body

    @classmethod
    def refused(cls, command_id: str | uuid.UUID, status: int, code: str, message: str,
                details: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> "CommandResult":
        return cls(command_id=command_id, ok=False, status=status,
                   error=ErrorBody(code=code, message=message, details=details or {}), extra=extra or {})

    def as_json(self) -> dict[str, Any]:
        body = self.model_dump(mode="json", exclude={"extra"})
        body.pop("data" if not self.ok else "error")
        if not self.idempotent:
            body.pop("idempotent")
        return {**self.extra, **body}


# -- dead letters: <prefix>.commands.dlq -------------------------------------------------------------------

# processing_failed: a valid command the service could not process (a bug); it is logged, answered with
# INTERNAL_ERROR, and kept here to be replayed once fixed.
DeadLetterReason = Literal["undecodable", "invalid_json", "unknown_command_type", "schema_invalid",
                           "processing_failed"]
# The dead letter's value is the original message's bytes and its key the original key; these headers say why.
DLQ_HEADERS = {
    "dlq.reason": "one of " + ", ".join(DeadLetterReason.__args__),  # type: ignore[attr-defined]
    "dlq.error": "what was wrong, for a person",
    "dlq.topic": "the topic the message came from",
    "dlq.partition": "its partition",
    "dlq.offset": "its offset",
    "dlq.command_id": "the command_id, when one could be read",
}


# -- events: <prefix>.events -------------------------------------------------------------------------------

class CloudEvent(BaseModel):
    """CloudEvents 1.0, JSON structured mode. Consumers dedupe on `id` (the relay is at-least-once)."""
    model_config = ConfigDict(extra="forbid")
    specversion: Literal["1.0"] = "1.0"
    id: uuid.UUID = Field(description="The event's id in the log")
    type: str = Field(pattern=r"^slotledger\.[a-z_]+\.[a-z_]+\.v\d+$", examples=["slotledger.appointment.booked.v1"])
    source: str = Field(examples=["/slotledger/orgs/5b3a…"])
    subject: str = Field(description="The appointment id, else the stream id")
    time: dt.datetime
    datacontenttype: Literal["application/json"] = "application/json"
    dataschema: str | None = None
    data: dict[str, Any]
    position: int = Field(description="Global position in the log")
    streamid: str
    streamversion: int
    orgid: str | None
    commandid: str | None = None
    requestid: str | None = None
