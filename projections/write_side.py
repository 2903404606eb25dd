"""The write side's own rows, derived from what the events did to each appointment: the one mapping from an
appointment record to the rows that enforce rules across window-days (DESIGN §2). They commit with the events,
and their unique and exclusion constraints turn a lost race into a retry.

- appointment_streams: which window-day holds the appointment now;
- booking_refs: one active appointment per external_reference_id;
- booking_keys: the duplicate rule, one active booking per phone, type and local date;
- doctor_bookings: the time an appointment, or a live hold, keeps its doctor (no two overlap: an exclusion
  constraint).
"""
from __future__ import annotations

import datetime as dt
from domain import doctors
from domain import events as ev
from domain.appointment import Appointment
from domain.hold import Hold
from domain.catalog import Catalog
from domain.patients import phone_key
from domain.timerules import parse_instant
from domain.windowday import stream_id
from projections.base import Write, recordset

_UPSERTS = {
    "appointment_streams": "INSERT INTO appointment_streams SELECT * FROM "
                           + recordset("appointment_id text, org_id uuid, stream_id text") + " WHERE {guard}"
                           " ON CONFLICT (appointment_id) DO UPDATE SET stream_id = EXCLUDED.stream_id",
    "booking_refs": "INSERT INTO booking_refs (appointment_id, org_id, external_reference_id)"
                    " SELECT * FROM " + recordset("appointment_id text, org_id uuid, external_reference_id text")
                    + " WHERE {guard}",
    "booking_keys": "INSERT INTO booking_keys (appointment_id, org_id, phone, service_id, local_date)"
                    " SELECT * FROM " + recordset("appointment_id text, org_id uuid, phone text, service_id text,"
                                             " local_date date") + " WHERE {guard} ON CONFLICT (appointment_id) DO UPDATE SET phone = EXCLUDED.phone,"
                    " service_id = EXCLUDED.service_id, local_date = EXCLUDED.local_date",
    "doctor_bookings": "INSERT INTO doctor_bookings (appointment_id, org_id, doctor, starts_at, ends_at)"
                       " SELECT * FROM " + recordset("appointment_id text, org_id uuid, doctor text,"
                                                " starts_at timestamptz, ends_at timestamptz")
                       + " WHERE {guard} ON CONFLICT (appointment_id) DO UPDATE"
                       " SET doctor = EXCLUDED.doctor, starts_at = EXCLUDED.starts_at, ends_at = EXCLUDED.ends_at",
}
TABLES = tuple(_UPSERTS)
# A new appointment's rows go in without ON CONFLICT. Its id is new, so a row already holding that id belongs to
# another appointment (ids are 51 random bits: two bookings may draw the same one). The primary key then fails
# the commit, and the booking is decided again under a fresh id; an upsert took the other appointment's rows
# over. (It also spares PostgreSQL the speculative insertion.)
_INSERTS = {table: sql.partition(" ON CONFLICT")[0] for table, sql in _UPSERTS.items()}
_DELETE = ("DELETE FROM {table} WHERE appointment_id IN (SELECT * FROM "
           + recordset("appointment_id text").replace("{", "{{").replace("}", "}}") + ") AND {{guard}}")


def rows(record: Appointment, org_id, catalog: Catalog) -> dict[str, tuple | None]:
    """The write-side rows an appointment record implies, per table (None: no row), each led by its id."""
    appointment_id = record.appointment_id
    active = record.active
    ref = record.external_reference_id
    time = doctors.doctor_time(record, catalog)
    return {
        "appointment_streams": (appointment_id, org_id, stream_id(record.window_id, record.date)),
        "booking_refs": (appointment_id, org_id, ref) if active and ref else None,
        "booking_keys": (appointment_id, org_id, phone_key(record.parent_phone, catalog.settings.phone_region),
                         record.appointment_type, dt.date.fromisoformat(record.date))
        if active and catalog.settings.prevent_duplicate_bookings else None,
        "doctor_bookings": None if time is None else (appointment_id, org_id, time.doctor, time.start, time.end),
    }


def writes(before: Appointment | None, after: Appointment, org_id, catalog: Catalog) -> list[Write]:
    """What changes in the write-side tables when an appointment goes from `before` (None: new) to `after`."""
    old = rows(before, org_id, catalog) if before is not None else {}
    puts = _UPSERTS if before is not None else _INSERTS
    out = []
    appointment_id = after.appointment_id
    for table, row in rows(after, org_id, catalog).items():
        if row == old.get(table):
            continue
        if row is None:
            out.append(Write(table, _DELETE.format(table=table), (appointment_id,), (appointment_id,)))
        else:
            out.append(Write(table, puts[table], row, (appointment_id,)))
    return out


_HOLD_DOCTOR = ("INSERT INTO doctor_bookings (appointment_id, org_id, doctor, starts_at, ends_at, hold_expires_at)"
                " SELECT * FROM " + recordset("hold_id text, org_id uuid, doctor text, starts_at timestamptz,"
                                              " ends_at timestamptz, hold_expires_at timestamptz")
                + " WHERE {guard}")


def hold_writes(event: ev.Event, org_id, catalog: Catalog) -> list[Write]:
    """A hold keeps its doctor from its placing until it is confirmed (the booking's row takes over), released
    or expired."""
    match event:
        case ev.HoldPlaced():
            hold = Hold.from_dict(event.hold)
            time = doctors.hold_time(hold, catalog)
            if time is None:
                return []
            return [Write("doctor_bookings", _HOLD_DOCTOR, (hold.hold_id, org_id, time.doctor, time.start, time.end,
                                                            parse_instant(hold.expires_at, "expires_at")),
                          (hold.hold_id,))]
        case ev.HoldConfirmed() | ev.HoldReleased() | ev.HoldExpired():
            return [Write("doctor_bookings", _DELETE.format(table="doctor_bookings"), (event.hold_id,),
                          (event.hold_id,))]
    return []


def config_stream(org_id, stream_id: str) -> Write:
    """A stream of the org's configuration, listed where loading the configuration finds it."""
    return Write("config_streams", "INSERT INTO config_streams (org_id, stream_id) SELECT * FROM "
                 + recordset("org_id uuid, stream_id text") + " WHERE {guard} ON CONFLICT DO NOTHING",
                 (org_id, stream_id), ((org_id, stream_id),))


def config_changed(org_id) -> Write:
    """Configuration events bump the org's config_version: every process's cached catalog is then stale."""
    return Write("orgs", "UPDATE orgs SET config_version = config_version + 1"
                 " WHERE org_id IN (SELECT * FROM " + recordset("org_id uuid") + ") AND {guard}", (org_id,), (org_id,))
