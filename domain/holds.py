"""Timed holds and the waitlist (DESIGN §8): decisions of the window-day aggregate, like bookings.

A live hold counts against capacity exactly like a booking, so a hold and a booking can never both take the
last place; a confirmation turns the held place into the booking. A window-day keeps its waitlist queue: when
a decision frees a place (a cancel, a move out, a release, an expiry, more capacity, a reopened date), the same
commit holds it for the first waiting entry (`settle`), so no one else can take it meanwhile.
"""
from __future__ import annotations

import copy
import secrets
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from domain import events as ev
from domain import windowday as wd
from domain.catalog import Catalog
from domain.errors import DomainError
from domain.hold import Hold, WaitlistEntry
from domain.timerules import at_local, iso_utc, parse_hhmm, parse_instant

HOLD_MINUTES = (1, 30)
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


def short_id(prefix: str) -> str:
    """`prefix_` + 10 random lowercase letters and digits (51 bits)."""
    n = secrets.randbits(51)
    chars = []
    for _ in range(10):
        n, digit = divmod(n, 36)
        chars.append(_ALPHABET[digit])
    return f"{prefix}_" + "".join(chars)


def hold_expired(hold_id: str) -> DomainError:
    return DomainError("HOLD_EXPIRED", f"hold '{hold_id}' has expired; place a new hold", {"hold_id": hold_id})


# -- holds ----------------------------------------------------------------------------------------------

def place(catalog: Catalog, day: wd.WindowDay, placement: wd.Placement, request: dict[str, Any], hold_id: str,
          now: datetime, minutes: int, duplicate_of: str | None = None) -> list[ev.Event]:
    """Rules 8–10 as for a booking (the duplicate rule only when a phone is given), then the hold."""
    if not HOLD_MINUTES[0] <= minutes <= HOLD_MINUTES[1]:
        raise DomainError("VALIDATION_ERROR", "Invalid request data",
                          {"hold_minutes": f"must be between {HOLD_MINUTES[0]} and {HOLD_MINUTES[1]}"})
    wd.check_bookable(catalog, day, placement, request.get("parent_phone"), duplicate_of, now)
    window = placement.window
    hold = Hold(hold_id=hold_id, appointment_type=placement.service.service_id,
                branch_id=placement.branch.branch_id, window_id=window.window_id,
                date=placement.local_date.isoformat(), session=window.session,
                appointment_date=iso_utc(placement.start), expires_at=iso_utc(now + timedelta(minutes=minutes)),
                created_at=iso_utc(now), **{k: request.get(k) for k in ("patient_name", "parent_phone",
                                                                       "assigned_doctor", "duration_minutes",
                                                                       "external_reference_id", "notes", "reason",
                                                                       "batch")})
    return [ev.HoldPlaced(hold=hold.as_dict())]


def placement_of(catalog: Catalog, hold: Hold) -> wd.Placement:
    return wd.Placement(catalog.services[hold.appointment_type], catalog.branches[hold.branch_id],
                        catalog.window(hold.window_id), parse_instant(hold.appointment_date),
                        date.fromisoformat(hold.date))


def confirm(catalog: Catalog, day: wd.WindowDay, hold_id: str, given: dict[str, Any], appointment_id: str,
            now: datetime, duplicate_of: str | None = None) -> list[ev.Event]:
    """The held place becomes a booking: never refused for capacity (the hold is that place); the duplicate rule
    and the day's being open still hold. `given`: patient fields the hold was placed without, or corrections."""
    hold = day.holds.get(hold_id)
    if hold is None or not hold.live(now):
        raise hold_expired(hold_id)
    request = {**hold.request(), **{k: v for k, v in given.items() if v is not None}}
    missing = {name: "is required (the hold was placed without it)"
               for name in ("patient_name", "parent_phone") if not request.get(name)}
    if missing:
        raise DomainError("VALIDATION_ERROR", "Invalid request data", missing)
    booked = wd.book(catalog, day, placement_of(catalog, hold), request, appointment_id, now, duplicate_of,
                     ignoring_hold=hold_id)
    return [ev.HoldConfirmed(hold_id=hold_id, appointment_id=appointment_id, waitlist_id=hold.waitlist_id), *booked]


def release(day: wd.WindowDay, hold_id: str) -> list[ev.Event]:
    hold = day.holds.get(hold_id)
    return [] if hold is None else [ev.HoldReleased(hold_id=hold_id, waitlist_id=hold.waitlist_id)]


def expire(day: wd.WindowDay, now: datetime) -> list[ev.Event]:
    """hold.expired for every hold past its time (and waitlist.offer_expired for offers), oldest first."""
    out: list[ev.Event] = []
    for hold in sorted(day.holds.values(), key=lambda h: (h.expires_at, h.hold_id)):
        if not hold.live(now):
            out.append(ev.HoldExpired(hold_id=hold.hold_id, waitlist_id=hold.waitlist_id))
            if hold.waitlist_id:
                out.append(ev.WaitlistOfferExpired(waitlist_id=hold.waitlist_id, hold_id=hold.hold_id))
    return out


# -- the waitlist ----------------------------------------------------------------------------------------

def leave(day: wd.WindowDay, waitlist_id: str) -> list[ev.Event]:
    """The entry leaves this window-day's queue; an offer it holds here is released (and passes on)."""
    out: list[ev.Event] = []
    hold = day.hold_of_entry(waitlist_id)
    if hold is not None:
        out.append(ev.HoldReleased(hold_id=hold.hold_id, waitlist_id=waitlist_id))
    if hold is not None or any(e.waitlist_id == waitlist_id for e in day.waiting):
        out.append(ev.WaitlistLeft(waitlist_id=waitlist_id, reason="left"))
    return out


def window_start(catalog: Catalog, window_id: str, day: str) -> str:
    window = catalog.window(window_id)
    return iso_utc(at_local(date.fromisoformat(day), parse_hhmm(window.start_time, "start_time"),
                            catalog.settings.timezone))


def offer_freed(catalog: Catalog, day: wd.WindowDay, now: datetime) -> list[ev.Event]:
    """Every place free now goes to the first waiting entry of its type, in join order: a hold for
    `waitlist_offer_minutes`, and waitlist.offered for notifiers. `day` already holds the decided events."""
    window = catalog.windows.get(day.window_id)
    if window is None or not day.waiting:
        return []
    out: list[ev.Event] = []
    taken: dict[str, int] = {}
    expires_at = iso_utc(now + timedelta(minutes=catalog.settings.waitlist_offer_minutes))
    for entry in day.waiting:
        service_id = entry.appointment_type
        if day.free(window, service_id, now) - taken.get(service_id, 0) <= 0:
            continue
        taken[service_id] = taken.get(service_id, 0) + 1
        hold = Hold(hold_id=short_id("hold"), appointment_type=service_id, branch_id=entry.branch_id,
                    window_id=window.window_id, date=day.date, session=window.session,
                    appointment_date=window_start(catalog, window.window_id, day.date), expires_at=expires_at,
                    created_at=iso_utc(now), patient_name=entry.patient_name, parent_phone=entry.parent_phone,
                    external_reference_id=entry.external_reference_id, notes=entry.notes,
                    waitlist_id=entry.waitlist_id)
        out += [ev.HoldPlaced(hold=hold.as_dict()),
                ev.WaitlistOffered(waitlist_id=entry.waitlist_id, hold_id=hold.hold_id, expires_at=expires_at,
                                   patient_name=entry.patient_name, parent_phone=entry.parent_phone)]
    return out


@dataclass
class Settled:
    by_stream: dict[str, list[ev.Event]]  # the decided events, followed by the offers they cause
    offered: set[str]  # waitlist ids offered a place in this commit
    elsewhere: set[str]  # other window-days whose queues hold an offered entry: they must let it go too


def settle(catalog: Catalog, days: dict[str, wd.WindowDay], by_stream: dict[str, list[ev.Event]],
           now: datetime) -> Settled:
    """The offers the decided events cause, on every window-day of the commit with a queue. An entry offered a
    place on one of its window-days leaves the others' queues in the same commit, so it is offered once."""
    out = {stream: list(events) for stream, events in by_stream.items()}
    after: dict[str, wd.WindowDay] = {}
    for stream in sorted(by_stream):
        day = days[stream]
        if day.waiting or any(isinstance(e, ev.WaitlistJoined) for e in by_stream[stream]):
            after[stream] = scratch = copy.deepcopy(day)  # the real day is folded only once the commit holds
            scratch.fold(by_stream[stream])
    offered: dict[str, WaitlistEntry] = {}
    for stream, day in after.items():
        _let_go(day, set(offered), out[stream])
        waiting = {e.waitlist_id: e for e in day.waiting}
        for event in offer_freed(catalog, day, now):
            if isinstance(event, ev.WaitlistOffered):
                offered[event.waitlist_id] = waiting[event.waitlist_id]
            day.apply(event)
            out[stream].append(event)
    for stream, day in after.items():  # entries offered on a window-day settled after this one
        _let_go(day, set(offered), out[stream])
    elsewhere = {s for entry in offered.values() for s in entry.streams} - set(after)
    return Settled(out, set(offered), elsewhere)


def let_go(day: wd.WindowDay, offered: set[str]) -> list[ev.Event]:
    """waitlist.left for the entries of this queue offered a place on another of their window-days."""
    return [ev.WaitlistLeft(waitlist_id=e.waitlist_id, reason="offered_elsewhere")
            for e in day.waiting if e.waitlist_id in offered]


def _let_go(day: wd.WindowDay, offered: set[str], out: list[ev.Event]) -> None:
    for event in let_go(day, offered):
        day.apply(event)
        out.append(event)
