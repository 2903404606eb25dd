"""Every write, as a command: the one code path the HTTP gateway and the Kafka ingestor share, from a validated
body to an Outcome whose `data` is exactly what the caller is answered with."""
from __future__ import annotations

import datetime as dt
from typing import Any, Awaitable, Callable

from domain import catalog as cat
from domain.errors import DomainError, validation
from domain.timerules import parse_day
from schemas import kafka as k
from schemas.http import ConfirmHold, CreateHold, JoinWaitlist
from schemas.http import CreateAppointment, CreateBranch, CreateDoctor, CreateService, CreateWindow, SettingsPatch, \
    UpdateAppointment, UpdateDoctor, UpdateWindow, UpdateWindowDay
from services.handler import CommandHandler
from services.outcome import Meta, Outcome


# -- configuration -------------------------------------------------------------------------------------

async def change_settings(handler: CommandHandler, org_id: str, body: SettingsPatch, meta: Meta) -> Outcome:
    changes = body.model_dump(exclude_unset=True)
    if not changes:
        raise DomainError("VALIDATION_ERROR", "no valid field to update",
                          {"body": "give at least one of " + ", ".join(cat.SETTING_NAMES)})
    if any(v is None for v in changes.values()):
        raise validation(next(k for k, v in changes.items() if v is None), "must not be null")
    return await handler.configure(org_id, f"org-{org_id}", lambda c: cat.change_settings(c, changes), meta,
                                   lambda c: {"general": c.settings.as_dict()})


async def create_service(handler: CommandHandler, org_id: str, body: CreateService, meta: Meta) -> Outcome:
    service_id = cat.new_id()
    return await handler.configure(org_id, f"service-{service_id}",
                                   lambda c: cat.add_service(c, service_id, body.name, body.duration_minutes), meta,
                                   lambda c: vars(c.services[service_id]), status=201)


async def register_doctor(handler: CommandHandler, org_id: str, body: CreateDoctor, meta: Meta) -> Outcome:
    doctor_id = cat.new_doctor_id()
    return await handler.configure(org_id, f"doctor-{doctor_id}", lambda c: cat.register_doctor(
        c, doctor_id, body.name, body.specialty, body.branch_ids), meta, lambda c: c.doctors[doctor_id].as_dict(),
        status=201)


async def change_doctor(handler: CommandHandler, org_id: str, doctor_id: str, body: UpdateDoctor,
                        meta: Meta) -> Outcome:
    changes = body.model_dump(exclude_unset=True)
    if not changes:
        raise DomainError("VALIDATION_ERROR", "no valid field to update", {"body": "give name, specialty or branch_ids"})
    if changes.get("name", "") is None:
        raise validation("name", "must not be null")
    return await handler.configure(org_id, f"doctor-{doctor_id}", lambda c: cat.change_doctor(c, doctor_id, changes),
                                   meta, lambda c: c.doctors[doctor_id].as_dict())


async def create_branch(handler: CommandHandler, org_id: str, body: CreateBranch, meta: Meta) -> Outcome:
    branch_id = cat.new_id()
    return await handler.configure(org_id, f"branch-{branch_id}", lambda c: cat.add_branch(c, branch_id, body.name),
                                   meta, lambda c: vars(c.branches[branch_id]), status=201)


async def create_window(handler: CommandHandler, org_id: str, body: CreateWindow, meta: Meta) -> Outcome:
    window = cat.Window(window_id=cat.new_id(), **body.model_dump())
    return await handler.configure(org_id, f"window-{window.window_id}", lambda c: cat.create_window(c, window),
                                   meta, lambda c: c.windows[window.window_id].as_dict(), status=201)


async def update_window(handler: CommandHandler, org_id: str, window_id: str, body: UpdateWindow,
                        meta: Meta) -> Outcome:
    changes = {k: v for k, v in body.model_dump(exclude_unset=True).items() if v is not None}
    if not changes:
        raise DomainError("VALIDATION_ERROR", "no valid field to update",
                          {"body": "give start_time, end_time, max_slots, batch or status"})
    outcome = await handler.configure(org_id, f"window-{window_id}",
                                      lambda c: cat.change_window(c, window_id, changes), meta,
                                      lambda c: c.windows[window_id].as_dict())
    if "max_slots" in changes or changes.get("status") == "OPEN":  # places may have freed: the waitlist first
        await handler.offer_waiting(org_id, window_id, meta)
    return outcome


async def disable_window(handler: CommandHandler, org_id: str, window_id: str, meta: Meta) -> Outcome:
    return await handler.configure(org_id, f"window-{window_id}", lambda c: cat.disable_window(c, window_id), meta,
                                   lambda c: c.windows[window_id].as_dict())


async def update_window_day(handler: CommandHandler, org_id: str, window_id: str, date: str, body: UpdateWindowDay,
                            meta: Meta) -> Outcome:
    return await handler.adjust_day(org_id, window_id, parse_day(date).isoformat(), body.status, body.max_slots,
                                    meta)


# -- appointments --------------------------------------------------------------------------------------

async def create_appointment(handler: CommandHandler, org_id: str, body: CreateAppointment, meta: Meta) -> Outcome:
    return await handler.create_appointment(org_id, body.model_dump(), meta)


def patch_of(body: UpdateAppointment) -> dict[str, Any]:
    """The PATCH body as the domain takes it: only the fields given."""
    patch = body.model_dump(exclude_unset=True)
    for name, value in patch.items():
        if value is None and name in ("appointment_date", "status"):
            raise validation(name, "must not be null")
    if isinstance(patch.get("follow_up_date"), dt.date):
        patch["follow_up_date"] = patch["follow_up_date"].isoformat()
    return patch


async def update_appointment(handler: CommandHandler, org_id: str, appointment_id: str, body: UpdateAppointment,
                             meta: Meta, strict: bool = False) -> Outcome:
    return await handler.update_appointment(org_id, appointment_id, patch_of(body), meta, strict)


def _with_status(status: str, body: k.CancelAppointment | k.CompleteAppointment) -> UpdateAppointment:
    return UpdateAppointment.model_validate({**body.model_dump(exclude_unset=True), "status": status})


def appointment_patch(command: Any) -> dict[str, Any]:
    """The patch of a Kafka update, cancel or complete command (raises DomainError for a bad one)."""
    match command.type:
        case "cancel_appointment":
            return patch_of(_with_status("cancelled", command.payload))
        case "complete_appointment":
            return patch_of(_with_status("completed", command.payload))
    return patch_of(command.payload)


# -- holds and the waitlist ------------------------------------------------------------------------------

async def place_hold(handler: CommandHandler, org_id: str, body: CreateHold, meta: Meta) -> Outcome:
    request = body.model_dump(exclude={"hold_minutes"})
    return await handler.place_hold(org_id, request, body.hold_minutes, meta)


async def confirm_hold(handler: CommandHandler, org_id: str, hold_id: str, body: ConfirmHold, meta: Meta) -> Outcome:
    return await handler.confirm_hold(org_id, hold_id, body.model_dump(exclude_unset=True), meta)


async def join_waitlist(handler: CommandHandler, org_id: str, body: JoinWaitlist, meta: Meta) -> Outcome:
    return await handler.join_waitlist(org_id, body.model_dump(), meta)


# -- Kafka: one envelope type → one of the commands above ------------------------------------------------

Dispatch = Callable[[CommandHandler, Any, Meta], Awaitable[Outcome]]

BY_TYPE: dict[str, Dispatch] = {
    "create_appointment": lambda h, c, m: create_appointment(h, str(c.org_id), c.payload, m),
    "update_appointment": lambda h, c, m: update_appointment(h, str(c.org_id), c.appointment_id, c.payload, m),
    "cancel_appointment": lambda h, c, m: update_appointment(h, str(c.org_id), c.appointment_id,
                                                             _with_status("cancelled", c.payload), m),
    "complete_appointment": lambda h, c, m: update_appointment(h, str(c.org_id), c.appointment_id,
                                                               _with_status("completed", c.payload), m),
    "create_window": lambda h, c, m: create_window(h, str(c.org_id), c.payload, m),
    "update_window": lambda h, c, m: update_window(h, str(c.org_id), c.window_id, c.payload, m),
    "disable_window": lambda h, c, m: disable_window(h, str(c.org_id), c.window_id, m),
    "update_window_day": lambda h, c, m: update_window_day(h, str(c.org_id), c.window_id, c.date.isoformat(),
                                                           c.payload, m),
    "create_hold": lambda h, c, m: place_hold(h, str(c.org_id), c.payload, m),
    "confirm_hold": lambda h, c, m: confirm_hold(h, str(c.org_id), c.hold_id, c.payload, m),
    "release_hold": lambda h, c, m: h.release_hold(str(c.org_id), c.hold_id, m),
    "join_waitlist": lambda h, c, m: join_waitlist(h, str(c.org_id), c.payload, m),
    "leave_waitlist": lambda h, c, m: h.leave_waitlist(str(c.org_id), c.waitlist_id, m),
}
assert set(BY_TYPE) == set(k.COMMAND_TYPES), "every Kafka command type needs a dispatch"


async def execute(handler: CommandHandler, command: Any, meta: Meta) -> Outcome:
    return await BY_TYPE[command.type](handler, command, meta)
