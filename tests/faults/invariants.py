"""The invariants every fault case checks afterwards, from the log and the read models (DESIGN §2)."""
from __future__ import annotations

import asyncpg


async def violations(conn: asyncpg.Connection, capacity: int) -> dict[str, int]:
    """Counts that must all be 0."""
    return dict(await conn.fetchrow(f"""
        SELECT
          (SELECT count(*) FROM (SELECT window_id, date FROM rm_schedule_bookings GROUP BY window_id, date
                                 HAVING count(*) > {capacity}) x) AS overbooked_window_days,
          (SELECT count(*) FROM (SELECT phone, appointment_type, date FROM rm_appointments WHERE status <> 'cancelled'
                                 GROUP BY phone, appointment_type, date HAVING count(*) > 1) x) AS duplicate_rule,
          (SELECT count(*) FROM (SELECT external_reference_id FROM rm_appointments WHERE status <> 'cancelled'
                                 AND external_reference_id IS NOT NULL GROUP BY org_id, external_reference_id
                                 HAVING count(*) > 1) x) AS external_reference,
          (SELECT count(*) FROM doctor_bookings a JOIN doctor_bookings b ON a.doctor = b.doctor
             AND a.appointment_id < b.appointment_id AND a.starts_at < b.ends_at AND b.starts_at < a.ends_at)
             AS doctor_double_booked,
          (SELECT count(*) FROM events e WHERE e.event_type = 'appointment.booked' AND NOT EXISTS (
             SELECT 1 FROM rm_appointments a WHERE a.appointment_id = e.data->'appointment'->>'appointment_id'))
             AS booked_but_not_readable,
          (SELECT count(*) FROM rm_appointments a WHERE NOT EXISTS (SELECT 1 FROM appointment_streams s
             WHERE s.appointment_id = a.appointment_id)) AS half_written,
          (SELECT count(*) FROM rm_appointments a WHERE (a.status <> 'cancelled') <> EXISTS (
             SELECT 1 FROM rm_schedule_bookings b WHERE b.appointment_id = a.appointment_id)) AS tracking_drift
    """))
