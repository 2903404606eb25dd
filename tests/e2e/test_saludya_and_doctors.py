"""SaludYa parity over real HTTP: the clinical lifecycle, doctor conflicts with suggested times, and
`PUT /api/appointments/{id}` in SaludYa's shapes."""
from __future__ import annotations

import asyncio
import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from domain.timerules import WEEKDAYS
from tests.builders import create_body
from tests.e2e.conftest import local_at, local_date, new_org, setup_clinic

DAYS = 4  # days ahead: past every notice period
DOCTOR = "Dr. Carlos Ramírez"


def _weekday(api, days: int) -> str:
    return WEEKDAYS[dt.date.fromisoformat(local_date(api, days)).weekday()]


async def _book(api, hhmm: str, phone: str, days: int = DAYS, **extra) -> tuple[int, dict]:
    return await api.post("/v1/appointments", create_body(local_at(api, days, hhmm), phone, name="María González",
                                                          **{"branch_id": api.ids["branch"], **extra}))


async def _second_branch(api) -> str:
    status, branch = await api.post("/v1/branches", {"name": "Annex"})
    assert status == 201, branch
    branch_id = branch["data"]["branch_id"]
    for day in WEEKDAYS:
        status, w = await api.post("/v1/appointment-slots", {
            "branch_id": branch_id, "day_of_week": day, "session": "Morning", "start_time": "09:00",
            "end_time": "12:00", "max_slots": 20})
        assert status == 201, w
    return branch_id


@pytest.fixture
async def clinic(runtime, http):
    return await setup_clinic(await new_org(runtime, http, tz="America/Bogota"))


async def test_two_simultaneous_bookings_of_one_doctor_in_different_branches_one_wins(runtime, clinic):
    api = clinic
    annex = await _second_branch(api)
    spellings = [DOCTOR, "dr.  carlos RAMÍREZ", " Dr. Carlos Ramírez "]
    results = await asyncio.gather(*(
        _book(api, "10:00" if i % 2 else "10:15", f"+5730000{i:04d}", assigned_doctor=spellings[i % 3],
              **({"branch_id": annex} if i % 2 else {"branch_id": api.ids["branch"]}))
        for i in range(20)))
    won = [b for s, b in results if s == 201]
    lost = [(i, s, b) for i, (s, b) in enumerate(results) if s != 201]
    assert len(won) == 1, [s for s, _ in results]
    winner = won[0]["appointment_id"]
    assert {(s, b["error"]["code"]) for _, s, b in lost} == {(409, "APPOINTMENT_CONFLICT")}
    assert {b["error"]["details"]["conflicting_appointment_id"] for _, _, b in lost} == {winner}

    # The suggestions are themselves bookable, for the doctor, in the branch that asked.
    for i, _, body in lost[:2]:
        suggested = body["error"]["details"]["suggested_times"]
        assert 1 <= len(suggested) <= 3, body
        branch = annex if i % 2 else api.ids["branch"]
        for n, moment in enumerate(suggested):
            status, booked = await api.post("/v1/appointments", {
                "appointment_type": "General Checkup", "appointment_date": moment, "branch_id": branch,
                "patient_name": "Suggested", "parent_phone": f"+5731{i}{n}00000", "assigned_doctor": DOCTOR})
            assert status == 201, (moment, booked)
            status, cancelled = await api.patch(f"/v1/appointments/{booked['appointment_id']}",
                                                {"status": "cancelled"})
            assert status == 200, cancelled
    async with runtime.pool.acquire() as conn:
        held = await conn.fetch("SELECT appointment_id FROM doctor_bookings WHERE org_id = $1", api.org_id)
    assert [r["appointment_id"] for r in held] == [winner]  # cancelled suggestions gave their time back


async def test_reschedule_and_assignment_respect_the_doctor_and_a_cancel_frees_it(clinic):
    api = clinic
    annex = await _second_branch(api)
    s, a1 = await _book(api, "10:00", "+571", assigned_doctor=DOCTOR)  # holds 10:00–10:45 (30 + 15 buffer)
    assert s == 201, a1
    s, a2 = await _book(api, "10:15", "+572", branch_id=annex)
    assert s == 201, a2
    a1_id, a2_id = a1["appointment_id"], a2["appointment_id"]

    s, b = await api.patch(f"/v1/appointments/{a2_id}", {"assigned_doctor": DOCTOR})
    assert (s, b["error"]["code"], b["error"]["details"]["conflicting_appointment_id"]) == (
        409, "APPOINTMENT_CONFLICT", a1_id)
    s, b = await api.patch(f"/v1/appointments/{a2_id}", {"assigned_doctor": DOCTOR,
                                                          "appointment_date": local_at(api, DAYS, "10:45")})
    assert s == 200 and b["data"]["assigned_doctor"] == DOCTOR, b  # moved clear of a1 and assigned at once
    s, b = await api.patch(f"/v1/appointments/{a2_id}", {"appointment_date": local_at(api, DAYS, "10:30")})
    assert (s, b["error"]["code"]) == (409, "APPOINTMENT_CONFLICT"), b
    s, b = await api.patch(f"/v1/appointments/{a1_id}", {"duration_minutes": 60})  # would run into a2
    assert (s, b["error"]["code"], b["error"]["details"]["conflicting_appointment_id"]) == (
        409, "APPOINTMENT_CONFLICT", a2_id)
    s, b = await _book(api, "10:00", "+573", assigned_doctor=DOCTOR.upper())
    assert s == 409
    s, b = await api.patch(f"/v1/appointments/{a1_id}", {"status": "cancelled"})
    assert s == 200
    s, b = await _book(api, "10:00", "+573", assigned_doctor=DOCTOR.upper())
    assert s == 201, b
    s, b = await _book(api, "10:00", "+574", assigned_doctor="Dr. Someone Else")
    assert s == 201, b


async def test_history_shows_booked_rescheduled_started_completed(clinic):
    api = clinic
    s, a = await _book(api, "09:30", "+575", assigned_doctor=DOCTOR)
    appointment_id = a["appointment_id"]
    steps = [{"appointment_date": local_at(api, DAYS + 1, "17:30")}, {"status": "in_progress"},
             {"status": "completed", "diagnosis": "Hipertensión arterial controlada"}]
    for patch in steps:
        s, b = await api.patch(f"/v1/appointments/{appointment_id}", patch)
        assert s == 200, b
    s, history = await api.get(f"/v1/appointments/{appointment_id}/history")
    assert s == 200
    kinds = [(e["type"], e["changed"].get("status")) for e in history["data"]]
    assert kinds == [("appointment.booked", "confirmed"), ("appointment.moved_out", None),
                     ("appointment.rescheduled", "rescheduled"), ("appointment.status_changed", "in_progress"),
                     ("appointment.details_changed", None), ("appointment.status_changed", "completed")], kinds
    assert history["data"][2]["changed"]["date"] == local_date(api, DAYS + 1)
    assert history["data"][-1]["changed"]["completed_at"]


STATUSES = ("confirmed", "rescheduled", "in_progress", "completed", "cancelled", "no_show")
ALLOWED = {
    "confirmed": {"rescheduled", "in_progress", "completed", "cancelled", "no_show"},
    "rescheduled": {"rescheduled", "in_progress", "completed", "cancelled", "no_show"},
    "in_progress": {"completed"},
    "completed": set(), "cancelled": set(), "no_show": set(),
}


async def test_every_transition_over_http(clinic):
    api = clinic
    n = 0

    async def appointment_in(status: str) -> str:
        nonlocal n
        n += 1
        s, a = await _book(api, f"{9 + n % 3:02d}:{(n // 3) % 4 * 15:02d}", f"+576{n:05d}", days=DAYS + n // 12)
        assert s == 201, a
        path = f"/v1/appointments/{a['appointment_id']}"
        if status == "confirmed":
            return path
        if status == "rescheduled":
            s, b = await api.patch(path, {"appointment_date": local_at(api, DAYS + n // 12, "17:00")})
        elif status == "completed":
            s, b = await api.patch(path, {"status": "in_progress"})
            assert s == 200, b
            s, b = await api.patch(path, {"status": "completed"})
        else:
            s, b = await api.patch(path, {"status": status})
        assert s == 200, (status, b)
        return path

    for start in STATUSES:
        for to in STATUSES:
            if to == "confirmed":
                continue  # nothing goes back to confirmed; a new appointment starts there
            path = await appointment_in(start)
            patch = {"appointment_date": local_at(api, DAYS + n // 12, "18:00")} if to == "rescheduled" else {
                "status": to}
            s, b = await api.patch(path, patch)
            if to in ALLOWED[start]:
                assert (s, b["data"]["status"]) == (200, to), (start, to, b)
            elif start == to:  # the same terminal status again: 200, unchanged
                assert s == 200 and b["data"]["status"] == to, (start, to, b)
            else:
                assert (s, b["error"]["code"]) == (422, "INVALID_STATE_TRANSITION"), (start, to, b)


async def test_required_reason_and_diagnosis_settings(clinic):
    api = clinic
    s, b = await api.patch("/v1/appointment-config", {"require_cancellation_reason": True,
                                                      "require_diagnosis_on_complete": True})
    assert s == 200, b
    s, a = await _book(api, "09:15", "+577")
    path = f"/v1/appointments/{a['appointment_id']}"
    s, b = await api.patch(path, {"status": "cancelled"})
    assert (s, b["error"]["code"], list(b["error"]["details"])) == (400, "VALIDATION_ERROR", ["cancellation_reason"])
    s, b = await api.patch(path, {"status": "completed"})
    assert (s, b["error"]["code"], list(b["error"]["details"])) == (400, "VALIDATION_ERROR", ["diagnosis"])
    s, b = await api.patch(path, {"status": "completed", "diagnosis": "ok"})
    assert (s, b["data"]["status"], b["data"]["diagnosis"]) == (200, "completed", "ok")
    s, a = await _book(api, "09:45", "+578")
    s, b = await api.patch(f"/v1/appointments/{a['appointment_id']}", {"status": "cancelled",
                                                                        "cancellation_reason": "travel"})
    assert (s, b["data"]["cancellation_reason"]) == (200, "travel") and b["data"]["cancelled_at"]


# -- SaludYa's PUT /api/appointments/{id} -------------------------------------------------------------------

async def _put(api, appointment_id: str, body: dict, key="default"):
    return await api.call("PUT", f"/api/appointments/{appointment_id}", json=body, key=key)


async def test_saludya_seed_examples_reschedule_complete_cancel(runtime, clinic):
    api = clinic
    s, a = await _book(api, "09:00", "+579", assigned_doctor=DOCTOR, duration_minutes=30,
                       reason="Consulta de control cardiovascular")
    appointment_id = a["appointment_id"]
    new_day = local_date(api, DAYS + 2)

    s, b = await _put(api, appointment_id, {"date": new_day, "time": "10:00",
                                             "notes": "Paciente solicitó cambio de horario", "send_notification": True})
    assert s == 200, b
    assert "success" not in b and "data" not in b  # SaludYa's bare object
    assert {k: b[k] for k in ("id", "doctor_name", "specialty", "date", "time", "duration_minutes", "status",
                              "reason", "notes")} == {
        "id": appointment_id, "doctor_name": DOCTOR, "specialty": "General Checkup", "date": new_day,
        "time": "10:00", "duration_minutes": 30, "status": "scheduled",
        "reason": "Consulta de control cardiovascular", "notes": "Paciente solicitó cambio de horario"}
    record = await runtime.handler.get_appointment(api.org_id, appointment_id)
    start = dt.datetime.fromisoformat(record.appointment_date.replace("Z", "+00:00"))
    assert start.astimezone(ZoneInfo("America/Bogota")).strftime("%Y-%m-%d %H:%M") == f"{new_day} 10:00"

    follow_up = local_date(api, 90)
    s, b = await _put(api, appointment_id, {
        "status": "completed", "diagnosis": "Hipertensión arterial controlada",
        "prescription": "Continuar con Enalapril 10mg una vez al día. Control en 3 meses.",
        "follow_up_required": True, "follow_up_date": follow_up, "send_notification": False})
    assert s == 200, b
    assert (b["status"], b["diagnosis"], b["follow_up_required"], b["follow_up_date"]) == (
        "completed", "Hipertensión arterial controlada", True, follow_up)
    assert b["completed_at"] and b["prescription"].startswith("Continuar")

    s, other = await _book(api, "09:30", "+580")
    s, b = await _put(api, other["appointment_id"], {
        "status": "cancelled", "cancellation_reason": "Paciente tuvo una emergencia familiar",
        "send_notification": True})
    assert s == 200, b
    assert (b["status"], b["cancellation_reason"]) == ("cancelled", "Paciente tuvo una emergencia familiar")
    assert b["cancelled_at"]

    s, history = await api.get(f"/v1/appointments/{appointment_id}/history")
    kinds = [e["type"] for e in history["data"]]
    # The reschedule asked for a notification; the completion (send_notification false) did not.
    assert kinds.count("appointment.notification_requested") == 1
    assert kinds.index("appointment.notification_requested") < kinds.index("appointment.status_changed")
    s, history = await api.get(f"/v1/appointments/{other['appointment_id']}/history")
    assert [e["type"] for e in history["data"]][-1] == "appointment.notification_requested"


async def test_saludya_errors_in_saludya_shapes(runtime, clinic):
    api = clinic
    s, a = await _book(api, "11:00", "+581", assigned_doctor=DOCTOR)
    s, c = await _book(api, "09:00", "+582")
    appointment_id, other_id = a["appointment_id"], c["appointment_id"]

    s, b = await _put(api, "apt_7k3m9n2p4q", {"notes": "x"})
    assert (s, b["error"]["code"]) == (404, "RESOURCE_NOT_FOUND") and "success" not in b
    s, b = await _put(api, other_id, {"time": "25:00"})
    assert (s, b["error"]["code"], list(b["error"]["details"])) == (400, "VALIDATION_ERROR", ["time"])
    s, b = await _put(api, other_id, {})
    assert (s, b["error"]["code"]) == (400, "VALIDATION_ERROR")
    s, b = await _put(api, other_id, {"time": "11:15", "date": local_date(api, DAYS)} | {"notes": "move"})
    assert s == 200, b  # no doctor on this one: no conflict
    s, b = await _put(api, other_id, {"status": "in_progress"})
    assert s == 200 and b["status"] == "in_progress"
    s, b = await _put(api, other_id, {"status": "cancelled"})
    assert (s, b["error"]["code"]) == (422, "INVALID_STATE_TRANSITION"), b
    s, b = await api.patch(f"/v1/appointments/{other_id}", {"assigned_doctor": DOCTOR})
    assert (s, b["error"]["code"]) == (409, "APPOINTMENT_CONFLICT")  # 11:15 overlaps 11:00 + 30 + 15

    s, d = await _book(api, "09:00", "+583", assigned_doctor="Dr. Other")
    s, b = await _put(api, d["appointment_id"], {"time": "11:15"})
    assert s == 200
    s, e = await _book(api, "09:00", "+584", assigned_doctor=DOCTOR)
    s, b = await _put(api, e["appointment_id"], {"time": "11:30"})
    assert (s, b["error"]["code"]) == (409, "APPOINTMENT_CONFLICT"), b
    assert b["error"]["details"]["conflicting_appointment_id"] == appointment_id
    # 11:45 is the last free quarter of the Morning window (it ends at 12:00); then the Evening window's.
    assert b["error"]["details"]["suggested_times"] == ["11:45", "17:00", "17:15"]

    s, b = await _put(api, appointment_id, {"status": "completed"})  # seed 003's 400, word for word
    assert (s, b) == (400, {"error": {"code": "VALIDATION_ERROR", "message": "Invalid request data", "details": {
        "status": "Cannot change status to 'completed' without providing diagnosis"}}})
    s, b = await _put(api, appointment_id, {"status": "cancelled"})  # "required when status is set to cancelled"
    assert (s, b["error"]["code"], list(b["error"]["details"])) == (400, "VALIDATION_ERROR", ["cancellation_reason"])
    s, b = await _put(api, appointment_id, {"status": "completed", "diagnosis": "Control"})
    assert s == 200 and b["status"] == "completed" and b["completed_at"].endswith("Z") and len(b["completed_at"]) == 20
    s, b = await _put(api, appointment_id, {"notes": "too late"})
    assert (s, b["error"]) == (422, {"code": "INVALID_STATE_TRANSITION", "message": "Cannot update a completed "
                                     "appointment. Contact support if you need to make changes.",
                                     "details": {"status": "completed", "requested": "update"}})
    s, b = await _put(api, appointment_id, {"status": "scheduled"})
    assert (s, b["error"]["code"]) == (422, "INVALID_STATE_TRANSITION")
    s, b = await _put(api, "apt_7k3m9n2p4q", {"notes": "x"})
    assert b["error"]["message"] == "Appointment with ID 'apt_7k3m9n2p4q' not found"

    s, b = await api.patch("/v1/appointment-config", {"require_diagnosis_on_complete": True})
    s, f = await _book(api, "09:15", "+585")
    s, b = await _put(api, f["appointment_id"], {"status": "completed"})
    assert (s, b["error"]["code"]) == (400, "VALIDATION_ERROR") and "status" in b["error"]["details"]
    s, b = await api.patch(f"/v1/appointments/{f['appointment_id']}", {"status": "completed"})  # /v1 names the field
    assert (s, b["error"]["code"]) == (400, "VALIDATION_ERROR") and "diagnosis" in b["error"]["details"]
