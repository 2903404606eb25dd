"""Holds and the waitlist as the API shows them (DESIGN §8). Projected inline."""
from __future__ import annotations

import datetime as dt

from domain import events as ev
from domain.timerules import parse_instant
from domain.windowday import stream_id
from projections.base import Write, inserting, recordset, updating

HOLDS, WAITLIST = "rm_holds", "rm_waitlist"

# A hold's id and an entry's are new (random): a row already holding one belongs to another hold or entry, and the
# insert fails as a duplicate key (decided again under a fresh id) instead of leaving the newcomer out. An entry
# has one event on each window-day it waits on; the first inserts its row and the others find it there
# (slotledger_same_entry, migration 018, fails any other).
_HOLD = (f"INSERT INTO {HOLDS} (hold_id, org_id, stream_id, window_id, date, service_id, status, expires_at,"
         " waitlist_id, record) SELECT * FROM "
         + recordset("hold_id text, org_id uuid, stream_id text, window_id text, date date, service_id text,"
                     " status text, expires_at timestamptz, waitlist_id text, record jsonb")
         + " WHERE {guard}")
_HOLD_STATUS = (f"UPDATE {HOLDS} h SET status = r.status, appointment_id = coalesce(r.appointment_id, h.appointment_id)"
                " FROM " + recordset("hold_id text, status text, appointment_id text", alias="r")
                + " WHERE h.hold_id = r.hold_id AND {guard}")
_ENTRY = (f"INSERT INTO {WAITLIST} (waitlist_id, org_id, date, branch_id, service_id, streams, status,"
          " external_reference_id, record) SELECT waitlist_id, org_id, date, branch_id, service_id,"
          " ARRAY(SELECT jsonb_array_elements_text(streams)), 'waiting', external_reference_id, record FROM "
          + recordset("waitlist_id text, org_id uuid, date date, branch_id text, service_id text, streams jsonb,"
                      " external_reference_id text, record jsonb")
          + " WHERE {guard} ON CONFLICT (waitlist_id)"
          f" DO UPDATE SET record = slotledger_same_entry({WAITLIST}.record, EXCLUDED.record)")
_ENTRY_STATUS = (f"UPDATE {WAITLIST} w SET status = r.status, hold_id = coalesce(r.hold_id, w.hold_id),"
                 " offer_expires_at = coalesce(r.offer_expires_at, w.offer_expires_at),"
                 " appointment_id = coalesce(r.appointment_id, w.appointment_id) FROM "
                 + recordset("waitlist_id text, status text, hold_id text, offer_expires_at timestamptz,"
                             " appointment_id text", alias="r")
                 + " WHERE w.waitlist_id = r.waitlist_id AND {guard}")


def _hold_status(hold_id: str, status: str, appointment_id: str | None = None) -> Write:
    return Write(HOLDS, _HOLD_STATUS, (hold_id, status, appointment_id), (hold_id,))


def _entry_status(waitlist_id: str | None, status: str, hold_id: str | None = None, expires_at: str | None = None,
                  appointment_id: str | None = None) -> list[Write]:
    if waitlist_id is None:
        return []
    offered_until = parse_instant(expires_at, "expires_at") if expires_at else None
    return [Write(WAITLIST, _ENTRY_STATUS, (waitlist_id, status, hold_id, offered_until, appointment_id),
                  (waitlist_id,))]


# Rows in COPY order: the insert's columns, then those only updates set (rm_waitlist's seq: its default).
_HOLD_ROW = ("hold_id", "org_id", "stream_id", "window_id", "date", "service_id", "status", "expires_at",
             "waitlist_id", "record", "appointment_id")
_ENTRY_ROW = ("waitlist_id", "org_id", "date", "branch_id", "service_id", "streams", "external_reference_id",
              "record", "status", "hold_id", "offer_expires_at", "appointment_id")


class HoldsProjector:
    name = "holds_waitlist"
    tables = (HOLDS, WAITLIST)
    columns = {HOLDS: _HOLD_ROW, WAITLIST: _ENTRY_ROW}
    folds = {_HOLD: inserting(_HOLD_ROW, appointment_id=None),
             _HOLD_STATUS: updating(_HOLD_ROW, "hold_id status appointment_id", replace="status",
                                    coalesce="appointment_id"),
             _ENTRY: inserting(_ENTRY_ROW, status="waiting", hold_id=None, offer_expires_at=None, appointment_id=None),
             _ENTRY_STATUS: updating(_ENTRY_ROW, "waitlist_id status hold_id offer_expires_at appointment_id",
                                     replace="status", coalesce="hold_id offer_expires_at appointment_id")}

    def writes(self, event: ev.Event, org_id) -> list[Write]:
        match event:
            case ev.HoldPlaced():
                h = event.hold
                return [Write(HOLDS, _HOLD, (h["hold_id"], org_id, stream_id(h["window_id"], h["date"]),
                                             h["window_id"], dt.date.fromisoformat(h["date"]), h["appointment_type"],
                                             "held", parse_instant(h["expires_at"], "expires_at"),
                                             h.get("waitlist_id"), h), (h["hold_id"],))]
            case ev.HoldConfirmed():
                return [_hold_status(event.hold_id, "confirmed", event.appointment_id),
                        *_entry_status(event.waitlist_id, "booked", appointment_id=event.appointment_id)]
            case ev.HoldReleased():
                return [_hold_status(event.hold_id, "released"), *_entry_status(event.waitlist_id, "declined")]
            case ev.HoldExpired():
                return [_hold_status(event.hold_id, "expired")]
            case ev.WaitlistJoined():
                e = event.entry
                return [Write(WAITLIST, _ENTRY, (e["waitlist_id"], org_id, dt.date.fromisoformat(e["date"]),
                                                 e["branch_id"], e["appointment_type"], e["streams"],
                                                 e.get("external_reference_id"), e), (e["waitlist_id"],))]
            case ev.WaitlistOffered():
                return _entry_status(event.waitlist_id, "offered", event.hold_id, event.expires_at)
            case ev.WaitlistOfferExpired():
                return _entry_status(event.waitlist_id, "expired")
            case ev.WaitlistLeft() if event.reason == "left":
                return _entry_status(event.waitlist_id, "left")
        return []
