"""Patients and doctors with ids (DESIGN §10), phones compared in E.164 (§3), and SaludYa's seed examples
answered field for field in seed 003's shape."""
from __future__ import annotations

import re
from urllib.parse import quote

from tests.builders import create_body
from tests.e2e.conftest import local_at, local_date, new_org, setup_clinic

SEED_003_KEYS = ["id", "patient_id", "patient_name", "doctor_id", "doctor_name", "specialty", "date", "time",
                 "duration_minutes", "status", "reason", "notes", "diagnosis", "prescription", "follow_up_required",
                 "follow_up_date", "created_at", "updated_at", "completed_at", "cancelled_at", "cancellation_reason"]
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")  # 2026-03-05T14:22:10Z


async def test_a_parents_phone_serves_two_children_and_a_child_booked_twice_is_one_patient(runtime, http):
    api = await setup_clinic(await new_org(runtime, http))
    await api.patch("/v1/appointment-config", {"phone_region": "IN"})
    bookings = [("Aadhi", "+91 98400-00001", 3), ("Meera", "09840000001", 3 + 1), ("aadhi ", "+919840000001", 5)]
    made = []
    for name, phone, days in bookings:
        status, a = await api.post("/v1/appointments", create_body(local_at(api, days, "09:30"), phone, name=name))
        assert status == 201, a
        made.append(a["data"])
    aadhi, meera, aadhi_again = made
    assert aadhi["patient_id"].startswith("pat_") and len(aadhi["patient_id"]) == 14
    assert aadhi["patient_id"] == aadhi_again["patient_id"] != meera["patient_id"]
    assert aadhi["parent_phone"] == "+91 98400-00001"  # the record keeps the phone as sent
    status, found = await api.get("/v1/patients?phone=" + quote("098400 00001"))
    assert status == 200 and sorted(p["patient_name"] for p in found["data"]) == ["Aadhi", "Meera"]
    assert {p["phone"] for p in found["data"]} == {"+919840000001"}
    status, one = await api.get(f"/v1/patients/{aadhi['patient_id']}")
    assert (status, one["data"]["patient_name"]) == (200, "Aadhi")
    status, listed = await api.get(f"/v1/patients/{aadhi['patient_id']}/appointments")
    assert [a["appointment_id"] for a in listed["data"]] == [aadhi["appointment_id"], aadhi_again["appointment_id"]]
    status, missing = await api.get("/v1/patients/pat_nobodyhere")
    assert (status, missing["error"]["code"]) == (404, "NOT_FOUND")
    # GET shows the same ids as the write answered
    status, got = await api.get(f"/v1/appointments/{meera['appointment_id']}")
    assert got["data"]["patient_id"] == meera["patient_id"]
    # Each patient is registered once, on their own stream, however often booked.
    async with runtime.pool.acquire() as conn:
        registered = await conn.fetch("SELECT stream_id, stream_version, data->>'patient_name' AS name FROM events"
                                      " WHERE event_type = 'patient.registered' ORDER BY name")
    assert [(r["stream_id"], r["stream_version"], r["name"]) for r in registered] == [
        (f"patient-{aadhi['patient_id']}", 1, "Aadhi"), (f"patient-{meera['patient_id']}", 1, "Meera")]


async def test_a_national_number_is_a_duplicate_of_its_international_form_in_the_orgs_region(runtime, http):
    api = await setup_clinic(await new_org(runtime, http))
    status, a = await api.post("/v1/appointments", create_body(local_at(api, 3, "09:30"), "+919840000001"))
    assert status == 201
    # Without a region, 09840000001 is just digits: not the same number.
    status, b = await api.post("/v1/appointments", create_body(local_at(api, 3, "17:30"), "09840000001", name="B"))
    assert status == 201, b
    await api.patch(f"/v1/appointments/{b['appointment_id']}", {"status": "cancelled"})
    status, config = await api.patch("/v1/appointment-config", {"phone_region": "IN"})
    assert (status, config["data"]["general"]["phone_region"]) == (200, "IN")
    status, c = await api.post("/v1/appointments", create_body(local_at(api, 3, "17:45"), "09840000001", name="C"))
    assert (status, c["error"]["code"], c["existing_appointment_id"]) == (
        409, "DUPLICATE_BOOKING", a["appointment_id"]), c
    status, bad = await api.patch("/v1/appointment-config", {"phone_region": "XX"})
    assert (status, bad["error"]["code"]) == (400, "VALIDATION_ERROR")


async def test_a_doctor_named_in_another_case_is_linked_and_conflicts_key_on_its_id(runtime, http):
    api = await setup_clinic(await new_org(runtime, http))
    status, doctor = await api.post("/v1/doctors", {"name": "Dr. Carlos Ramírez", "specialty": "Cardiología",
                                                    "branch_ids": [api.ids["branch"]]})
    assert status == 201, doctor
    doctor_id = doctor["data"]["doctor_id"]
    assert re.fullmatch(r"doc_[a-z0-9]{10}", doctor_id)
    status, again = await api.post("/v1/doctors", {"name": "dr. carlos  ramírez"})
    assert (status, again["error"]["code"]) == (409, "CONFLICT")
    status, a = await api.post("/v1/appointments", create_body(local_at(api, 3, "09:30"), "+571",
                                                               assigned_doctor="  DR. CARLOS   RAMÍREZ "))
    assert (status, a["data"]["doctor_id"]) == (201, doctor_id)
    status, b = await api.post("/v1/appointments", create_body(local_at(api, 3, "09:45"), "+572",
                                                               assigned_doctor=doctor_id))
    assert (status, b["error"]["code"]) == (409, "APPOINTMENT_CONFLICT")  # by id, the same doctor
    assert b["error"]["details"]["conflicting_appointment_id"] == a["appointment_id"]
    status, c = await api.post("/v1/appointments", create_body(local_at(api, 3, "10:30"), "+573",
                                                               assigned_doctor=doctor_id))
    assert (status, c["data"]["doctor_id"], c["data"]["assigned_doctor"]) == (201, doctor_id, "Dr. Carlos Ramírez")
    status, free_text = await api.post("/v1/appointments", create_body(local_at(api, 3, "09:30"), "+574",
                                                                       assigned_doctor="Dr. Unknown"))
    assert (status, free_text["data"]["doctor_id"]) == (201, None)
    status, renamed = await api.patch(f"/v1/doctors/{doctor_id}", {"specialty": "Cardiology"})
    assert (status, renamed["data"]["specialty"]) == (200, "Cardiology")
    status, listed = await api.get("/v1/doctors")
    assert [d["doctor_id"] for d in listed["data"]] == [doctor_id]
    status, one = await api.get("/v1/doctors/doc_nobodyhere")
    assert (status, one["error"]["code"]) == (404, "NOT_FOUND")


async def test_saludyas_three_seed_examples_field_for_field(runtime, http):
    api = await setup_clinic(await new_org(runtime, http, tz="America/Bogota"))
    status, doctor = await api.post("/v1/doctors", {"name": "Dr. Carlos Ramírez", "specialty": "Cardiología"})
    doctor_id = doctor["data"]["doctor_id"]
    status, a = await api.post("/v1/appointments", create_body(
        local_at(api, 5, "09:00"), "+573001234567", name="María González", assigned_doctor="Dr. Carlos Ramírez",
        duration_minutes=30, reason="Consulta de control cardiovascular"))
    assert status == 201, a
    appointment_id, patient_id = a["appointment_id"], a["data"]["patient_id"]
    new_day = local_date(api, 7)

    status, rescheduled = await api.call("PUT", f"/api/appointments/{appointment_id}", json={
        "date": new_day, "time": "10:00", "notes": "Paciente solicitó cambio de horario", "send_notification": True})
    assert status == 200, rescheduled
    assert list(rescheduled) == SEED_003_KEYS
    assert STAMP.match(rescheduled["created_at"]) and STAMP.match(rescheduled["updated_at"])
    assert {k: v for k, v in rescheduled.items() if k not in ("created_at", "updated_at")} == {
        "id": appointment_id, "patient_id": patient_id, "patient_name": "María González", "doctor_id": doctor_id,
        "doctor_name": "Dr. Carlos Ramírez", "specialty": "Cardiología", "date": new_day, "time": "10:00",
        "duration_minutes": 30, "status": "scheduled", "reason": "Consulta de control cardiovascular",
        "notes": "Paciente solicitó cambio de horario", "diagnosis": None, "prescription": None,
        "follow_up_required": False, "follow_up_date": None, "completed_at": None, "cancelled_at": None,
        "cancellation_reason": None}

    follow_up = local_date(api, 90)
    status, completed = await api.call("PUT", f"/api/appointments/{appointment_id}", json={
        "status": "completed", "diagnosis": "Hipertensión arterial controlada",
        "prescription": "Continuar con Enalapril 10mg una vez al día. Control en 3 meses.",
        "follow_up_required": True, "follow_up_date": follow_up, "send_notification": False})
    assert status == 200, completed
    assert list(completed) == SEED_003_KEYS and STAMP.match(completed["completed_at"])
    assert {k: completed[k] for k in ("status", "diagnosis", "prescription", "follow_up_required", "follow_up_date",
                                      "patient_id", "doctor_id", "specialty")} == {
        "status": "completed", "diagnosis": "Hipertensión arterial controlada",
        "prescription": "Continuar con Enalapril 10mg una vez al día. Control en 3 meses.",
        "follow_up_required": True, "follow_up_date": follow_up, "patient_id": patient_id, "doctor_id": doctor_id,
        "specialty": "Cardiología"}

    status, other = await api.post("/v1/appointments", create_body(local_at(api, 5, "09:30"), "+573001234568",
                                                                   name="María González"))
    status, cancelled = await api.call("PUT", f"/api/appointments/{other['appointment_id']}", json={
        "status": "cancelled", "cancellation_reason": "Paciente tuvo una emergencia familiar",
        "send_notification": True})
    assert status == 200, cancelled
    assert list(cancelled) == SEED_003_KEYS and STAMP.match(cancelled["cancelled_at"])
    assert (cancelled["status"], cancelled["cancellation_reason"], cancelled["doctor_id"], cancelled["specialty"]) == (
        "cancelled", "Paciente tuvo una emergencia familiar", None, "General Checkup")


async def test_simultaneous_first_bookings_of_one_patient_register_them_once(runtime, http):
    import asyncio

    api = await setup_clinic(await new_org(runtime, http))
    results = await asyncio.gather(*(api.post("/v1/appointments", create_body(
        local_at(api, 2 + i, "09:30"), "+15550009999", name="Same Child")) for i in range(10)))
    assert [s for s, _ in results] == [201] * 10
    assert len({b["data"]["patient_id"] for _, b in results}) == 1
    async with runtime.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM events WHERE event_type = 'patient.registered'") == 1
        assert await conn.fetchval("SELECT count(*) FROM rm_patients") == 1
