"""Schedule tracking and availability: active bookings per window-day, and each date's own status/capacity."""
from __future__ import annotations

import datetime as dt

from domain import events as ev
from projections.base import Statement

_BOOKING = ("INSERT INTO rm_schedule_bookings VALUES ($1, $2, $3, $4, $5) ON CONFLICT (appointment_id)"
            " DO UPDATE SET window_id = EXCLUDED.window_id, date = EXCLUDED.date")
_FREED = "DELETE FROM rm_schedule_bookings WHERE appointment_id = $1"
_DAY = ("INSERT INTO rm_window_days VALUES ($1, $2, $3, $4, $5) ON CONFLICT (window_id, date) DO UPDATE"
        " SET status = coalesce(EXCLUDED.status, rm_window_days.status),"
        " max_slots = coalesce(EXCLUDED.max_slots, rm_window_days.max_slots)")


class ScheduleProjector:
    name = "schedule_tracking"
    tables = ("rm_schedule_bookings", "rm_window_days")

    def statements(self, event: ev.Event, stored) -> list[Statement]:
        match event:
            case ev.AppointmentBooked() | ev.AppointmentRescheduled():
                r = event.appointment
                return [(_BOOKING, (r["appointment_id"], stored.org_id, r["window_id"],
                                    dt.date.fromisoformat(r["date"]), r["appointment_type"]))]
            case ev.AppointmentStatusChanged() if event.status == "cancelled":
                return [(_FREED, (event.appointment_id,))]
            case ev.WindowDayAdjusted():
                return [(_DAY, (event.window_id, dt.date.fromisoformat(event.date), stored.org_id, event.status,
                                event.max_slots))]
        return []
