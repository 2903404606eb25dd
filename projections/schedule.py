"""Schedule tracking and availability: active bookings per window-day, and each date's own status/capacity.
Projected inline."""
from __future__ import annotations

import datetime as dt

from domain import events as ev
from domain.windowday import is_active
from projections.base import Write, deleting, inserting, recordset

BOOKINGS, DAYS = "rm_schedule_bookings", "rm_window_days"

_BOOKING = (f"INSERT INTO {BOOKINGS} SELECT * FROM "
            + recordset("appointment_id text, org_id uuid, window_id text, date date, appointment_type text")
            + " WHERE {guard} ON CONFLICT (appointment_id)"
            " DO UPDATE SET window_id = EXCLUDED.window_id, date = EXCLUDED.date")
_FREED = f"DELETE FROM {BOOKINGS} WHERE appointment_id IN (SELECT * FROM {recordset('appointment_id text')}) AND {{guard}}"
_DAY = (f"INSERT INTO {DAYS} SELECT * FROM "
        + recordset("window_id text, date date, org_id uuid, status text, max_slots int")
        + " WHERE {guard} ON CONFLICT (window_id, date) DO UPDATE"
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


_BOOKING_ROW = ("appointment_id", "org_id", "window_id", "date", "service_id")
_DAY_ROW = ("window_id", "date", "org_id", "status", "max_slots")


class ScheduleProjector:
    name = "schedule_tracking"
    tables = (BOOKINGS, DAYS)
    columns = {BOOKINGS: _BOOKING_ROW, DAYS: _DAY_ROW}
    folds = {_BOOKING: inserting(_BOOKING_ROW, replace="window_id date"), _FREED: deleting,
             _DAY: inserting(_DAY_ROW, coalesce="status max_slots")}

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
