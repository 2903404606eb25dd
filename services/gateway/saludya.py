"""SaludYa compatibility: `PUT /api/appointments/{id}` in SaludYa's request, response and error shapes, on the
same domain, command path and scoped keys as /v1."""
from __future__ import annotations

from typing import Any

from aiohttp import web

from domain import catalog as cat
from domain import windowday as wd
from domain.errors import DomainError
from domain.timerules import at_local, iso_utc, local, parse_hhmm, parse_instant
from schemas.http import ClinicalUpdate, UpdateAppointment
from schemas.saludya import SaludYaUpdate
from services import commands
from services.gateway.handlers import json_text, meta
from services.outcome import Meta, Outcome
from services.keys import Principal
from services.gateway.backend import Backend

# Our codes that SaludYa spells differently; the rest are the same words.
CODES = {"NOT_FOUND": "RESOURCE_NOT_FOUND", "INSUFFICIENT_SCOPE": "FORBIDDEN"}
MESSAGES = {"UNAUTHORIZED": "Invalid or missing API token",
            "INSUFFICIENT_SCOPE": "You don't have permission to modify this appointment"}
_COPIED = tuple(ClinicalUpdate.model_fields)


def error_response(status: int, code: str, message: str, details: dict | None = None,
                   extra: dict | None = None, headers: dict | None = None) -> web.Response:
    body = {"error": {"code": CODES.get(code, code), "message": MESSAGES.get(code, message),
                      "details": {**(extra or {}), **(details or {})}}}
    return web.json_response(body, status=status, dumps=json_text, headers=headers)


def _stamp(value: str | None) -> str | None:
    """SaludYa's timestamps are to the second: 2026-03-05T14:22:10Z."""
    return None if value is None else value[:19] + "Z"


def record(appointment: dict[str, Any], catalog: cat.Catalog) -> dict[str, Any]:
    """Our appointment in SaludYa's response shape (its 21 keys), in its status words."""
    start = local(parse_instant(appointment["appointment_date"]), catalog.settings.timezone)
    service = catalog.services.get(appointment["appointment_type"])
    return {
        "id": appointment["appointment_id"],
        "patient_id": appointment.get("patient_id"),
        "patient_name": appointment["patient_name"],
        "doctor_id": appointment.get("doctor_id"),
        "doctor_name": appointment["assigned_doctor"],
        "specialty": catalog.specialty(appointment.get("doctor_id"), service),
        "date": appointment["date"],
        "time": start.strftime("%H:%M"),
        "duration_minutes": appointment.get("duration_minutes"),
        "status": wd.saludya_status(appointment["status"]),
        "reason": appointment.get("reason"),
        "notes": appointment.get("notes"),
        "diagnosis": appointment.get("diagnosis"),
        "prescription": appointment.get("prescription"),
        "follow_up_required": appointment.get("follow_up_required", False),
        "follow_up_date": appointment.get("follow_up_date"),
        "created_at": _stamp(appointment["created_at"]),
        "updated_at": _stamp(appointment["updated_at"]),
        "completed_at": _stamp(appointment.get("completed_at")),
        "cancelled_at": _stamp(appointment.get("cancelled_at")),
        "cancellation_reason": appointment.get("cancellation_reason"),
    }


def _in_saludya_words(exc: DomainError, appointment_id: str, tz: str) -> DomainError:
    """Our refusal as SaludYa words it: its messages, its status names, local suggested times."""
    if exc.code == "NOT_FOUND":
        exc.message = f"Appointment with ID '{appointment_id}' not found"
    elif exc.code == "APPOINTMENT_CONFLICT":
        exc.details["suggested_times"] = [local(parse_instant(t), tz).strftime("%H:%M")
                                          for t in exc.details.get("suggested_times", [])]
    elif exc.code == "VALIDATION_ERROR" and "diagnosis" in exc.details:  # seed 003's 400 names `status`
        exc.details = {"status": exc.details.pop("diagnosis"), **exc.details}
    elif exc.code == "INVALID_STATE_TRANSITION":
        for internal, theirs in wd.SALUDYA_STATUS.items():
            exc.message = exc.message.replace(internal, theirs)
        exc.details = {k: sorted({wd.saludya_status(x) for x in v}) if isinstance(v, list)
                       else wd.saludya_status(v) if isinstance(v, str) else v for k, v in exc.details.items()}
    return exc


async def _update(backend: Backend, principal: Principal, appointment_id: str, given: dict[str, Any],
                  patch: dict[str, Any], tz: str, who: Meta) -> Outcome:
    """SaludYa's `date` + `time` (local) and status words, made our patch; then the same command as /v1."""
    current = None
    if "date" in given or "time" in given:
        current = await backend.handler.get_appointment(principal.org_id, appointment_id)
        was = local(parse_instant(current.appointment_date), tz)
        day = given.get("date") or was.date()
        wall = parse_hhmm(given["time"], "time") if "time" in given else was.time().replace(tzinfo=None)
        patch["appointment_date"] = iso_utc(at_local(day, wall, tz))
    if "status" in given:
        wanted = given["status"]
        if wanted == "scheduled":  # SaludYa's word: what it means depends on the appointment's status
            current = current or await backend.handler.get_appointment(principal.org_id, appointment_id)
            wanted = wd.from_saludya_status(current.status, wanted)
        if wanted is not None:
            patch["status"] = wanted
    return await commands.update_appointment(backend.handler, principal.org_id, appointment_id,
                                             UpdateAppointment.model_validate(patch), who, strict=True)


async def update_appointment(request, backend: Backend, principal: Principal, body: SaludYaUpdate) -> web.Response:
    appointment_id = request.match_info["appointment_id"]
    catalog = await backend.handler.catalog(principal.org_id)
    tz = catalog.settings.timezone
    given = body.model_dump(exclude_unset=True)
    if not given:
        raise DomainError("VALIDATION_ERROR", "Invalid request data", {"body": "give at least one field to update"})
    patch: dict[str, Any] = {name: given[name] for name in _COPIED if name in given}
    patch["send_notification"] = body.send_notification  # SaludYa notifies unless told not to
    try:
        outcome = await _update(backend, principal, appointment_id, given, patch, tz, meta(request, principal))
    except DomainError as exc:
        raise _in_saludya_words(exc, appointment_id, tz) from None
    headers = {"X-Position": str(outcome.position)} if outcome.position is not None else None
    return web.json_response(record(outcome.data, catalog), headers=headers, dumps=json_text)
