"""Doctor schedules, pure: overlap with the buffer, who occupies, and suggested times that a booking accepts."""
from __future__ import annotations

import datetime as dt

from domain import doctors
from domain.appointment import Appointment
from domain import windowday as wd
from domain.errors import DomainError
from tests.unit.test_domain import NOW, World, make_catalog, request

def at(hhmm: str, day: str = "2026-03-03") -> dt.datetime:
    return dt.datetime.fromisoformat(f"{day}T{hhmm}:00+00:00")


def busy(appointment_id: str, start: str, minutes: int, doctor: str = "dr. ramírez") -> doctors.DoctorTime:
    return doctors.DoctorTime(appointment_id, doctor, at(start), at(start) + dt.timedelta(minutes=minutes))


def test_a_doctor_is_one_doctor_however_the_name_is_written():
    assert doctors.doctor_key("  Dr.  Carlos   RAMÍREZ ") == doctors.doctor_key("dr. carlos ramírez")
    assert doctors.doctor_key("   ") is None and doctors.doctor_key(None) is None


def test_the_doctor_is_held_for_duration_plus_buffer_and_only_while_active():
    world = World(make_catalog(max_slots=5, buffer_time_minutes=15))
    record = world.create(request("2026-03-03T09:30:00Z", assigned_doctor="Dr. Ramírez", duration_minutes=30))
    held = doctors.doctor_time(Appointment.from_dict(record), world.catalog)
    assert (held.doctor, held.start, held.end) == ("dr. ramírez", at("09:30"), at("10:15"))
    for status in ("cancelled", "no_show"):
        assert doctors.doctor_time(Appointment.from_dict({**record, "status": status}), world.catalog) is None
    assert doctors.doctor_time(Appointment.from_dict({**record, "assigned_doctor": None}), world.catalog) is None


def test_overlap_counts_the_buffer_of_the_earlier_appointment_and_never_itself():
    existing = busy("a1", "10:00", 45)  # 30 minutes + 15 buffer
    assert doctors.first_clash(busy("new", "10:30", 45), [existing]) == existing
    assert doctors.first_clash(busy("new", "10:45", 45), [existing]) is None
    assert doctors.first_clash(busy("new", "09:15", 45), [existing]) is None  # ends exactly at 10:00
    assert doctors.first_clash(busy("new", "09:30", 45), [existing]) == existing
    assert doctors.first_clash(busy("a1", "10:00", 45), [existing]) is None  # its own time
    assert doctors.first_clash(busy("new", "10:00", 45, doctor="dr. other"), [existing]) is None


def test_suggestions_are_the_next_free_quarter_hours_a_booking_would_accept():
    catalog = make_catalog(max_slots=5)  # Morning 09:00–11:00, Evening 17:00–19:00, buffer 15 (the default)
    day = wd.WindowDay("w-tuesday-Morning", "2026-03-03")
    taken = [busy("a1", "09:00", 45), busy("a2", "10:00", 45)]
    wanted = busy("new", "09:15", 45)
    times = doctors.suggest_times(catalog, "svc-a", "br-1", wanted, taken, {day.stream_id: day}, NOW)
    # 09:30 and 09:45 would run into a2 at 10:00, 10:00–10:30 are a2's own; 10:45 is free, then the Morning
    # window ends at 11:00 and the next starts a booking accepts are the Evening window's.
    assert times == [at("10:45"), at("17:00"), at("17:15")]
    evening = doctors.suggest_times(catalog, "svc-a", "br-1", busy("new", "16:00", 45), [], {}, NOW)
    assert evening == [at("17:00"), at("17:15"), at("17:30")]


def test_suggestions_skip_a_full_or_closed_window_day():
    catalog = make_catalog(max_slots=1)
    world = World(catalog)
    world.create(request("2026-03-03T09:00:00Z", phone="1"))  # the Morning window-day is now full for svc-a
    [full_day] = world.days.values()
    times = doctors.suggest_times(catalog, "svc-a", "br-1", busy("new", "09:00", 45), [],
                                  {full_day.stream_id: full_day}, NOW)
    assert times == [at("17:00"), at("17:15"), at("17:30")]  # not the full Morning window-day
    closed = wd.WindowDay("w-tuesday-Evening", "2026-03-03")
    for e in wd.adjust_day(closed, "CLOSED", None):
        closed.apply(e)
    assert doctors.suggest_times(catalog, "svc-a", "br-1", busy("new", "09:00", 45), [],
                                 {full_day.stream_id: full_day, closed.stream_id: closed}, NOW) == []


def test_the_conflict_names_the_other_appointment_and_the_suggestions():
    error = doctors.conflict(busy("appt_other00001", "10:00", 45), [at("10:45")])
    assert isinstance(error, DomainError) and (error.code, error.status) == ("APPOINTMENT_CONFLICT", 409)
    assert error.details == {"conflicting_appointment_id": "appt_other00001",
                             "suggested_times": ["2026-03-03T10:45:00.000Z"]}


def test_record_after_folds_a_patch_without_touching_the_day():
    world = World(make_catalog(max_slots=5))
    record = world.create(request("2026-03-03T09:30:00Z", assigned_doctor="Dr. A"))
    day = world.days[world.where[record["appointment_id"]]]
    by_stream = wd.update(world.catalog, day, record["appointment_id"], {"assigned_doctor": "Dr. B"}, NOW)
    after = doctors.record_after(Appointment.from_dict(record), by_stream[day.stream_id])
    assert (after.assigned_doctor, record["assigned_doctor"]) == ("Dr. B", "Dr. A")
    assert day.appointments[record["appointment_id"]].assigned_doctor == "Dr. A"
