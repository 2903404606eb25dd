"""Doctors and patients (DESIGN §10). Doctors are org configuration, folded from their own streams like
services and branches; patients are projected inline from bookings."""
from __future__ import annotations

import uuid

from aiohttp import web

from domain.errors import not_found
from domain.patients import phone_key
from projections import queries
from schemas.http import CreateDoctor, PatientAppointmentsQuery, PatientQuery, UpdateDoctor
from services import commands
from services.gateway.backend import Backend
from services.gateway.handlers import answer, meta, ok
from services.keys import Principal


async def list_doctors(request, backend: Backend, principal: Principal) -> web.Response:
    catalog = await backend.handler.catalog(principal.org_id)
    return ok([d.as_dict() for d in sorted(catalog.doctors.values(), key=lambda d: (d.name.casefold(), d.doctor_id))])


async def get_doctor(request, backend: Backend, principal: Principal) -> web.Response:
    catalog = await backend.handler.catalog(principal.org_id)
    return ok(catalog.doctor(request.match_info["doctor_id"]).as_dict())


async def create_doctor(request, backend: Backend, principal: Principal, body: CreateDoctor) -> web.Response:
    return answer(await commands.register_doctor(backend.handler, principal.org_id, body, meta(request, principal)))


async def update_doctor(request, backend: Backend, principal: Principal, body: UpdateDoctor) -> web.Response:
    return answer(await commands.change_doctor(backend.handler, principal.org_id, request.match_info["doctor_id"],
                                               body, meta(request, principal)))


_PATIENT = "SELECT patient_id, phone, patient_name, parent_phone FROM rm_patients WHERE org_id = $1"


async def find_patients(request, backend: Backend, principal: Principal, query: PatientQuery) -> web.Response:
    catalog = await backend.handler.catalog(principal.org_id)
    async with backend.pool.acquire() as conn:
        rows = await conn.fetch(_PATIENT + " AND phone = $2 ORDER BY patient_name, patient_id",
                                uuid.UUID(principal.org_id), phone_key(query.phone, catalog.settings.phone_region))
    return ok([dict(r) for r in rows])


async def _patient(backend: Backend, principal: Principal, patient_id: str) -> dict:
    async with backend.pool.acquire() as conn:
        row = await conn.fetchrow(_PATIENT + " AND patient_id = $2", uuid.UUID(principal.org_id), patient_id)
    if row is None:
        raise not_found("patient", patient_id)
    return dict(row)


async def get_patient(request, backend: Backend, principal: Principal) -> web.Response:
    return ok(await _patient(backend, principal, request.match_info["patient_id"]))


async def patient_appointments(request, backend: Backend, principal: Principal,
                               query: PatientAppointmentsQuery) -> web.Response:
    patient = await _patient(backend, principal, request.match_info["patient_id"])
    async with backend.pool.acquire() as conn:
        items, next_cursor = await queries.search(conn, principal.org_id, {"patient_id": patient["patient_id"]},
                                                  query.limit, query.cursor)
    return ok(items, next_cursor=next_cursor)
