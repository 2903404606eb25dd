"""Schedule tracking and availability: active bookings per window-day, and each date's own status/capacity."""
from __future__ import annotations

import datetime as dt

import asyncpg

from domain import events as ev


class ScheduleProjector:
    name = "schedule_tracking"
    tables = ("rm_schedule_bookings", "rm_window_days")

    async def apply(self, conn: asyncpg.Connection, event: ev.Event, stored) -> None:
        match event:
            case ev.AppointmentBooked() | ev.AppointmentRescheduled():
                r = event.appointment
                await conn.execute(
                    "INSERT INTO rm_schedule_bookings VALUES ($1, $2, $3, $4, $5) ON CONFLICT (appointment_id)"
                    " DO UPDATE SET window_id = EXCLUDED.window_id, date = EXCLUDED.date",
                    r["appointment_id"], stored.org_id, r["window_id"], dt.date.fromisoformat(r["date"]),
                    r["appointment_type"])
            case ev.AppointmentStatusChanged() if event.status == "cancelled":
                await conn.execute("DELETE FROM rm_schedule_bookings WHERE appointment_id = $1", event.appointment_id)
            case ev.WindowDayAdjusted():
                await conn.execute(
                    "INSERT INTO rm_window_days VALUES ($1, $2, $3, $4, $5) ON CONFLICT (window_id, date) DO UPDATE"
                    " SET status = coalesce(EXCLUDED.status, rm_window_days.status),"
                    " max_slots = coalesce(EXCLUDED.max_slots, rm_window_days.max_slots)",
                    event.window_id, dt.date.fromisoformat(event.date), stored.org_id, event.status, event.max_slots)

