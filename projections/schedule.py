"""Schedule tracking and availability: active bookings per window-day, and each date's own status/capacity.
Projected inline."""
from __future__ import annotations

import datetime as dt

from domain import events as ev
from domain.windowday import is_active
from projections.base import Write

BOOKINGS, DAYS = "rm_schedule_bookings", "rm_window_days"

_BOOKING = (f"INSERT INTO {BOOKINGS} SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::date[],"
            " $5::text[]) WHERE {guard} ON CONFLICT (appointment_id)"
            " DO UPDATE SET window_id = EXCLUDED.window_id, date = EXCLUDED.date")
_FREED = f"DELETE FROM {BOOKINGS} WHERE appointment_id = ANY($1::text[]) AND {{guard}}"
_DAY = (f"INSERT INTO {DAYS} SELECT * FROM unnest($1::text[], $2::date[], $3::uuid[], $4::text[], $5::int[])"
        " WHERE {guard} ON CONFLICT (window_id, date) DO UPDATE"
        f" SET status = coalesce(EXCLUDED.status, {DAYS}.status),"
        f" max_slots = coalesce(EXCLUDED.max_slots, {DAYS}.max_slots)")


def booking_writes(record: dict, org_id) -> list[Write]:
    """The booking row an appointment record implies: counted while active, gone otherwise."""
    if not is_active(record):
        return [freed(record["appointment_id"])]
    return [Write(BOOKINGS, _BOOKING, (record["appointment_id"], org_id, record["window_id"],
                                       dt.date.fromisoformat(record["date"]), record["appointment_type"]),
                  (record["appointment_id"],))]


def freed(appointment_id: str) -> Write:
    return Write(BOOKINGS, _FREED, (appointment_id,), (appointment_id,))


class ScheduleProjector:
    name = "schedule_tracking"
    tables = (BOOKINGS, DAYS)

    def writes(self, event: ev.Event, org_id) -> list[Write]:
        match event:
            case ev.AppointmentBooked() | ev.AppointmentRescheduled():
                return booking_writes(event.appointment, org_id)
            case ev.AppointmentStatusChanged() if not is_active({"status": event.status}):
                return [freed(event.appointment_id)]
            case ev.WindowDayAdjusted():
                return [Write(DAYS, _DAY, (event.window_id, dt.date.fromisoformat(event.date), org_id, event.status,
                                           event.max_slots), ((event.window_id, event.date),))]
        return []
