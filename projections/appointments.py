"""The appointments read model: one row per appointment (cancelled ones too), searchable. Projected inline."""
from __future__ import annotations

import datetime as dt

from domain import events as ev
from domain.patients import patient_id, phone_key
from projections.base import Write, inserting, recordset

TABLE = "rm_appointments"

_PUT = f"""
INSERT INTO {TABLE} (appointment_id, org_id, date, branch_id, window_id, status, phone, assigned_doctor,
                     appointment_type, external_reference_id, record, patient_id)
SELECT * FROM {recordset("appointment_id text, org_id uuid, date date, branch_id text, window_id text, status text,"
                   " phone text, assigned_doctor text, appointment_type text, external_reference_id text,"
                   " record jsonb, patient_id text")}
WHERE {{guard}}
ON CONFLICT (appointment_id) DO UPDATE SET date = EXCLUDED.date, branch_id = EXCLUDED.branch_id,
    window_id = EXCLUDED.window_id, status = EXCLUDED.status, assigned_doctor = EXCLUDED.assigned_doctor,
    record = EXCLUDED.record
"""

# Changes merge into the stored record; every event that changes an appointment counts one version.
_MERGE = f"""
UPDATE {TABLE} a SET record = n.record, status = n.record->>'status', assigned_doctor = n.record->>'assigned_doctor'
FROM (SELECT a.appointment_id, (a.record || c.changes)
             || jsonb_build_object('version', (a.record->>'version')::int + 1) AS record
      FROM {recordset("appointment_id text, changes jsonb", alias="c")} JOIN {TABLE} a USING (appointment_id)) n
WHERE a.appointment_id = n.appointment_id AND {{guard}}
"""


PATIENTS = "rm_patients"
_PATIENT = (f"INSERT INTO {PATIENTS} SELECT * FROM "
            + recordset("patient_id text, org_id uuid, phone text, patient_name text, parent_phone text")
            + " WHERE {guard} ON CONFLICT (patient_id) DO NOTHING")


ROW = ("appointment_id", "org_id", "date", "branch_id", "window_id", "status", "phone", "assigned_doctor",
       "appointment_type", "external_reference_id", "record", "patient_id")
PATIENT_ROW = ("patient_id", "org_id", "phone", "patient_name", "parent_phone")
_RECORD, _STATUS, _DOCTOR = ROW.index("record"), ROW.index("status"), ROW.index("assigned_doctor")


def _merged(rows: dict, key: str, values: tuple) -> None:
    """_MERGE, in memory."""
    row = rows.get(key)
    if row is None:
        return
    version = row[_RECORD].get("version")
    record = row[_RECORD] = {**row[_RECORD], **values[1], "version": None if version is None else int(version) + 1}
    row[_STATUS], row[_DOCTOR] = record.get("status"), record.get("assigned_doctor")


class AppointmentsProjector:
    name = "appointments"
    tables = (TABLE, PATIENTS)
    columns = {TABLE: ROW, PATIENTS: PATIENT_ROW}
    folds = {_PUT: inserting(ROW, replace="date branch_id window_id status assigned_doctor record"),
             _MERGE: _merged, _PATIENT: inserting(PATIENT_ROW)}

    def writes(self, event: ev.Event, org_id) -> list[Write]:
        match event:
            case ev.AppointmentBooked() | ev.AppointmentRescheduled():
                r = event.appointment
                phone = getattr(event, "phone_e164", None) or phone_key(r["parent_phone"])
                patient = r.get("patient_id")
                if not patient or "doctor_id" not in r:
                    # Bookings from before patients and doctors had ids get them here, on rebuild (phones as
                    # sent then). Others keep the event's own dict (never changed in place): a copy of every
                    # record was ~6% of a rebuild's Python.
                    patient = patient or patient_id(str(org_id), r["parent_phone"], r["patient_name"])
                    r = {**r, "patient_id": patient, "doctor_id": r.get("doctor_id")}
                out = [Write(TABLE, _PUT, (
                    r["appointment_id"], org_id, dt.date.fromisoformat(r["date"]), r["branch_id"], r["window_id"],
                    r["status"], phone, r["assigned_doctor"], r["appointment_type"], r["external_reference_id"], r,
                    patient), (r["appointment_id"],))]
                if isinstance(event, ev.AppointmentBooked) and not event.appointment.get("patient_id"):
                    # booked before patients were registered: the booking is the only record of them
                    out.append(Write(PATIENTS, _PATIENT, (patient, org_id, phone, r["patient_name"],
                                                          r["parent_phone"]), (patient,)))
                return out
            case ev.PatientRegistered():
                return [Write(PATIENTS, _PATIENT, (event.patient_id, org_id, event.phone_e164, event.patient_name,
                                                   event.parent_phone), (event.patient_id,))]
            case ev.AppointmentDetailsChanged():
                return [_merge(event.appointment_id, {**event.changes, "updated_at": event.updated_at})]
            case ev.AppointmentStatusChanged():
                return [_merge(event.appointment_id,
                               {**event.changes, "status": event.status, "updated_at": event.updated_at})]
        return []


def _merge(appointment_id: str, changes: dict) -> Write:
    return Write(TABLE, _MERGE, (appointment_id, changes), (appointment_id,))
