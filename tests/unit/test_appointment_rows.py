"""The appointments read model's row for a booking: records written before patients and doctors had ids gain
them (the same ids a booking would get today); others are stored as the event holds them."""
import uuid

from domain import events as ev
from domain.appointment import FIELDS
from domain.patients import patient_id
from projections.appointments import PATIENTS, ROW, TABLE, AppointmentsProjector

ORG = uuid.UUID("6f1c2a3e-1111-2222-3333-444455556666")


def _record(**given) -> dict:
    return {name: None for name in FIELDS} | {
        "appointment_id": "appt_1", "appointment_type": "svc_1", "branch_id": "br_1", "window_id": "win_1",
        "date": "2026-12-03", "status": "confirmed", "patient_name": "Ana  Ruiz", "parent_phone": "+919840000001",
        "version": 1} | given


def _rows(event) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for write in AppointmentsProjector().writes(event, ORG):
        columns = ROW if write.table == TABLE else ("patient_id", "org_id", "phone", "patient_name", "parent_phone")
        out.setdefault(write.table, []).append(dict(zip(columns, write.row)))
    return out


def test_a_current_booking_is_stored_as_its_event_holds_it():
    record = _record(patient_id="pat_given", doctor_id="doc_1")
    rows = _rows(ev.AppointmentBooked(appointment=record, phone_e164="+919840000001"))
    (row,) = rows[TABLE]
    assert row["record"] == record and row["patient_id"] == "pat_given" and row["phone"] == "+919840000001"
    assert PATIENTS not in rows  # registered on its own stream by then


def test_a_booking_from_before_patient_and_doctor_ids_gains_them():
    record = _record()
    del record["patient_id"], record["doctor_id"]
    rows = _rows(ev.AppointmentBooked(appointment=record))
    (row,) = rows[TABLE]
    expected = patient_id(str(ORG), "+919840000001", "Ana  Ruiz")
    assert row["patient_id"] == expected and row["record"]["patient_id"] == expected
    assert row["record"]["doctor_id"] is None and "doctor_id" not in record  # the event's dict is left as it was
    assert [p["patient_id"] for p in rows[PATIENTS]] == [expected]


def test_a_move_from_before_doctor_ids_gains_the_field():
    record = _record(patient_id="pat_given")
    del record["doctor_id"]
    (row,) = _rows(ev.AppointmentRescheduled(appointment=record, previous={}))[TABLE]
    assert row["record"] == {**record, "doctor_id": None} and row["patient_id"] == "pat_given"


def test_a_booking_with_a_doctor_but_no_patient_id_gains_the_patient():
    record = _record(doctor_id="doc_1")  # patient_id None
    (row,) = _rows(ev.AppointmentBooked(appointment=record))[TABLE]
    assert row["patient_id"] == row["record"]["patient_id"] == patient_id(str(ORG), "+919840000001", "Ana Ruiz")
    assert row["record"]["doctor_id"] == "doc_1"
