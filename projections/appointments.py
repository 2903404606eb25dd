"""The appointments read model: one row per appointment (cancelled ones too), searchable."""
from __future__ import annotations

import datetime as dt

from domain import events as ev
from domain.windowday import normalise_phone
from projections.base import Statement

_UPSERT = """
INSERT INTO rm_appointments (appointment_id, org_id, date, branch_id, window_id, status, phone, assigned_doctor,
                             appointment_type, external_reference_id, record, position)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT (appointment_id) DO UPDATE SET date = EXCLUDED.date, branch_id = EXCLUDED.branch_id,
    window_id = EXCLUDED.window_id, status = EXCLUDED.status, assigned_doctor = EXCLUDED.assigned_doctor,
    record = EXCLUDED.record, position = EXCLUDED.position
"""

_MERGE = """
UPDATE rm_appointments a SET record = n.record, status = n.record->>'status',
       assigned_doctor = n.record->>'assigned_doctor', position = $3
FROM (SELECT appointment_id, (record || $2::jsonb)
             || jsonb_build_object('version', (record->>'version')::int + 1) AS record
      FROM rm_appointments WHERE appointment_id = $1) n
WHERE a.appointment_id = n.appointment_id
"""


class AppointmentsProjector:
    name = "appointments"
    tables = ("rm_appointments",)

    def statements(self, event: ev.Event, stored) -> list[Statement]:
        match event:
            case ev.AppointmentBooked() | ev.AppointmentRescheduled():
                r = event.appointment
                return [(_UPSERT, (r["appointment_id"], stored.org_id, dt.date.fromisoformat(r["date"]),
                                   r["branch_id"], r["window_id"], r["status"], normalise_phone(r["parent_phone"]),
                                   r["assigned_doctor"], r["appointment_type"], r["external_reference_id"], r,
                                   stored.position))]
            case ev.AppointmentDetailsChanged():
                return [(_MERGE, (event.appointment_id, {**event.changes, "updated_at": event.updated_at},
                                  stored.position))]
            case ev.AppointmentStatusChanged():
                return [(_MERGE, (event.appointment_id,
                                  {**event.changes, "status": event.status, "updated_at": event.updated_at},
                                  stored.position))]
        return []
