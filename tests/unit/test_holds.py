"""Holds and the waitlist in the domain alone (DESIGN §8): no database, a clock the test moves."""
from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain import decisions, holds
from domain import events as ev
from domain import windowday as wd
from domain.errors import DomainError
from domain.hold import WaitlistEntry
from domain.timerules import iso_utc
from tests.unit.test_domain import NOW, make_catalog, request

DAY = "2026-03-03"  # a Tuesday: Morning 09–11 and Evening 17–19
SERVICES = {"svc-a": "General Checkup", "svc-b": "Follow-up Visit"}


class Desk:
    """One date's window-days and a clock; every decision is settled as the handler settles it."""

    def __init__(self, max_slots: int = 2, **settings_):
        self.catalog = make_catalog(max_slots=max_slots, **settings_)
        self.days: dict[str, wd.WindowDay] = {}
        self.now = NOW
        self.n = 0

    def day(self, session: str = "Morning") -> wd.WindowDay:
        stream = wd.stream_id(f"w-tuesday-{session}", DAY)
        return self.days.setdefault(stream, wd.WindowDay(f"w-tuesday-{session}", DAY))

    def commit(self, by_stream: dict[str, list[ev.Event]]) -> list[ev.Event]:
        for stream in list(by_stream) + [s for e in self._joined(by_stream) for s in e.streams]:
            self.days.setdefault(stream, wd.WindowDay(*wd.split_stream_id(stream)))
        settled = holds.settle(self.catalog, self.days, by_stream, self.now)
        out = settled.by_stream
        for stream in settled.elsewhere:  # the handler loads these; here every day is at hand
            out[stream] = holds.let_go(self.days[stream], settled.offered)
        for stream, events in out.items():
            for event in events:
                self.days[stream].apply(event)
        return [e for events in out.values() for e in events]

    @staticmethod
    def _joined(by_stream):
        return [WaitlistEntry.from_dict(e.entry) for events in by_stream.values() for e in events
                if isinstance(e, ev.WaitlistJoined)]

    def _next(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}_{self.n:010d}"

    def create(self, time: str = "09:30", phone: str = "1", type_: str = "General Checkup") -> str:
        req = request(f"{DAY}T{time}:00Z", phone=phone, type_=type_)
        placement = decisions.plan_create(self.catalog, req, self.now)
        appointment_id = self._next("appt")
        self.commit({placement.stream_id: decisions.decide_create(self.catalog, self.day_of(placement), placement,
                                                                  req, appointment_id, self.now)})
        return appointment_id

    def day_of(self, placement: wd.Placement) -> wd.WindowDay:
        return self.days.setdefault(placement.stream_id, wd.WindowDay(placement.window.window_id, DAY))

    def hold(self, time: str = "09:30", phone: str | None = None, type_: str = "General Checkup",
             minutes: int = 5) -> str:
        req = request(f"{DAY}T{time}:00Z", phone=phone, type_=type_)
        placement = decisions.plan_create(self.catalog, req, self.now)
        hold_id = self._next("hold")
        self.commit({placement.stream_id: holds.place(self.catalog, self.day_of(placement), placement, req, hold_id,
                                                      self.now, minutes)})
        return hold_id

    def where(self, hold_id: str) -> wd.WindowDay:
        return next(d for d in self.days.values() if hold_id in d.holds)

    def confirm(self, hold_id: str, **given) -> str:
        day = self.where(hold_id) if any(hold_id in d.holds for d in self.days.values()) else self.day()
        appointment_id = self._next("appt")
        self.commit({day.stream_id: holds.confirm(self.catalog, day, hold_id, {"patient_name": "P", **given},
                                                  appointment_id, self.now)})
        return appointment_id

    def release(self, hold_id: str) -> None:
        day = self.where(hold_id)
        self.commit({day.stream_id: holds.release(day, hold_id)})

    def cancel(self, appointment_id: str) -> None:
        day = next(d for d in self.days.values() if appointment_id in d.appointments)
        self.commit(wd.update(self.catalog, day, appointment_id, {"status": "cancelled"}, self.now))

    def sweep(self) -> None:
        for day in list(self.days.values()):
            expired = holds.expire(day, self.now)
            if expired:
                self.commit({day.stream_id: expired})

    def join(self, name: str, session: str | None = "Morning", type_: str = "svc-a") -> str:
        sessions = [session] if session else ["Morning", "Evening"]
        entry = WaitlistEntry(self._next("wl"), type_, "br-1", DAY, session, name, f"+9198400{self.n:05d}", None,
                              None, iso_utc(self.now), tuple(sorted(self.day(s).stream_id for s in sessions)))
        self.commit({s: [ev.WaitlistJoined(entry=entry.as_dict())] for s in entry.streams})
        return entry.waitlist_id

    def leave(self, waitlist_id: str) -> None:
        self.commit({s: events for s, d in self.days.items() if (events := holds.leave(d, waitlist_id))})

    def offer_of(self, waitlist_id: str) -> str | None:
        found = [d.hold_of_entry(waitlist_id) for d in self.days.values()]
        return next((h.hold_id for h in found if h is not None), None)

    def queue(self, session: str = "Morning") -> list[str]:
        return [e.waitlist_id for e in self.day(session).waiting]


def code_of(fn, *args, **kwargs) -> str:
    with pytest.raises(DomainError) as raised:
        fn(*args, **kwargs)
    return raised.value.code


# -- holds ----------------------------------------------------------------------------------------------

def test_a_live_hold_counts_against_capacity_and_confirming_it_cannot_fail_for_capacity():
    desk = Desk(max_slots=2)
    first, second = desk.hold(), desk.hold()
    assert code_of(desk.create) == "SLOT_FULL"
    assert code_of(desk.hold) == "SLOT_FULL"
    desk.confirm(first, parent_phone="+919840000001")
    desk.confirm(second, parent_phone="+919840000002")
    assert desk.day().booked("svc-a") == 2 and not desk.day().holds


def test_an_expired_hold_stops_counting_before_any_sweep_and_cannot_be_confirmed():
    desk = Desk(max_slots=1)
    held = desk.hold(minutes=2)
    assert code_of(desk.create) == "SLOT_FULL"
    desk.now += dt.timedelta(minutes=2)  # expires_at is not "live": now < expires_at fails
    assert held in desk.day().holds  # not swept
    assert code_of(desk.confirm, held, parent_phone="+919840000009") == "HOLD_EXPIRED"
    desk.create(phone="2")
    desk.sweep()
    assert not desk.day().holds and desk.day().booked("svc-a") == 1


def test_a_hold_without_a_phone_skips_the_duplicate_rule_until_confirmed_with_one():
    desk = Desk(max_slots=3)
    desk.create(phone="+919840000001")
    held = desk.hold()  # no phone: no duplicate rule yet
    assert code_of(desk.hold, phone="+91 98400 00001") == "DUPLICATE_BOOKING"
    assert code_of(desk.confirm, held, parent_phone="+919840000001") == "DUPLICATE_BOOKING"
    assert code_of(desk.confirm, held) == "VALIDATION_ERROR"  # no phone at all
    desk.confirm(held, parent_phone="+919840000002")


def test_hold_minutes_are_bounded():
    desk = Desk()
    assert code_of(desk.hold, minutes=0) == "VALIDATION_ERROR"
    assert code_of(desk.hold, minutes=31) == "VALIDATION_ERROR"


# -- the waitlist ----------------------------------------------------------------------------------------

def test_freed_places_go_to_the_waiting_entries_in_join_order_in_the_freeing_commit():
    desk = Desk(max_slots=3, waitlist_offer_minutes=10)
    booked = [desk.create(phone=str(n)) for n in range(3)]
    entries = [desk.join(f"P{n}") for n in range(5)]
    assert desk.queue() == entries
    for n, appointment_id in enumerate(booked):
        desk.now = NOW + dt.timedelta(minutes=n)
        desk.cancel(appointment_id)
        assert code_of(desk.create, phone="99") == "SLOT_FULL"  # the freed place is already held
    offers = [desk.offer_of(e) for e in entries]
    assert all(offers[:3]) and not any(offers[3:])
    assert desk.queue() == entries[3:]
    hold = desk.day().holds[offers[0]]
    assert hold.expires_at == iso_utc(NOW + dt.timedelta(minutes=10)) and hold.appointment_date == f"{DAY}T09:00:00.000Z"
    desk.now = NOW + dt.timedelta(minutes=10)
    desk.sweep()  # the first offer expires; the fourth entry gets it
    assert desk.offer_of(entries[3]) is not None and desk.queue() == entries[4:]
    desk.confirm(desk.offer_of(entries[3]), parent_phone="+919840000040")
    assert desk.day().booked("svc-a") == 1 and desk.day().held("svc-a", desk.now) == 2  # two offers still live


def test_an_entry_on_two_window_days_is_offered_once_and_leaves_the_other_queue():
    desk = Desk(max_slots=1)
    morning, evening = desk.create(time="09:30", phone="1"), desk.create(time="17:30", phone="2")
    either = desk.join("Either", session=None)
    later = desk.join("Later", session="Evening")
    desk.cancel(morning)
    assert desk.offer_of(either) is not None and desk.queue("Evening") == [later]
    desk.cancel(evening)
    assert desk.offer_of(later) is not None


def test_joining_when_a_place_is_free_is_an_offer_at_once_and_leaving_passes_an_offer_on():
    desk = Desk(max_slots=1)
    first = desk.join("First")
    assert desk.offer_of(first) is not None and desk.queue() == []
    second = desk.join("Second")
    assert desk.queue() == [second]
    desk.leave(first)  # releases its offer: the place passes on
    assert desk.offer_of(first) is None and desk.offer_of(second) is not None


def test_more_capacity_or_a_reopened_date_is_offered_too():
    desk = Desk(max_slots=1)
    desk.create()
    waiting = desk.join("W")
    day = desk.day()
    desk.commit({day.stream_id: wd.adjust_day(day, "CLOSED", None)})
    desk.commit({day.stream_id: wd.adjust_day(day, None, 2)})
    assert desk.offer_of(waiting) is None  # closed: nothing is free
    desk.commit({day.stream_id: wd.adjust_day(day, "OPEN", None)})
    assert desk.offer_of(waiting) is not None


# -- the property ----------------------------------------------------------------------------------------

op = st.one_of(
    st.tuples(st.just("create"), st.sampled_from(["09:30", "17:30"]), st.integers(0, 6), st.sampled_from(list(SERVICES))),
    st.tuples(st.just("hold"), st.sampled_from(["09:30", "17:30"]), st.integers(1, 3), st.sampled_from(list(SERVICES))),
    st.tuples(st.just("confirm"), st.integers(0, 30)),
    st.tuples(st.just("release"), st.integers(0, 30)),
    st.tuples(st.just("cancel"), st.integers(0, 30)),
    st.tuples(st.just("join"), st.sampled_from(["Morning", "Evening", None]), st.sampled_from(list(SERVICES))),
    st.tuples(st.just("leave"), st.integers(0, 30)),
    st.tuples(st.just("expire"), st.integers(1, 4)),
)


class Script:
    """Runs drawn operations on a desk, remembering the ids they made for later operations to pick from."""

    def __init__(self, desk: Desk):
        self.desk = desk
        self.appointments: list[str] = []
        self.held: list[str] = []
        self.entries: list[str] = []

    def run(self, step) -> str | None:
        """One operation; the refusal's code, if refused."""
        desk, appointments, held, entries = self.desk, self.appointments, self.held, self.entries
        try:
            match step:
                case ("create", time, phone, service):
                    appointments.append(desk.create(time, phone=str(phone), type_=SERVICES[service]))
                case ("hold", time, minutes, service):
                    held.append(desk.hold(time, type_=SERVICES[service], minutes=minutes))
                case ("confirm", i) if held or any(desk.offer_of(e) for e in entries):
                    pool = held + [o for o in (desk.offer_of(e) for e in entries) if o]
                    appointments.append(desk.confirm(pool[i % len(pool)], parent_phone=f"+91984{i:07d}"))
                case ("release", i) if held:
                    hold_id = held[i % len(held)]
                    if any(hold_id in d.holds for d in desk.days.values()):
                        desk.release(hold_id)
                case ("cancel", i) if appointments:
                    desk.cancel(appointments[i % len(appointments)])
                case ("join", session, service):
                    entries.append(desk.join("W", session=session, type_=service))
                case ("leave", i) if entries:
                    desk.leave(entries[i % len(entries)])
                case ("expire", minutes):
                    desk.now += dt.timedelta(minutes=minutes)
                    desk.sweep()
        except DomainError as exc:
            assert exc.code in {"SLOT_FULL", "DUPLICATE_BOOKING", "HOLD_EXPIRED", "INVALID_STATE_TRANSITION"}
            return exc.code
        return None


@settings(max_examples=200, deadline=None)
@given(st.lists(op, max_size=50), st.integers(1, 3))
def test_no_sequence_exceeds_capacity_and_no_freed_place_is_left_while_someone_waits(ops, max_slots):
    desk = Desk(max_slots=max_slots, waitlist_offer_minutes=2)
    script = Script(desk)
    entries = script.entries
    for step in ops:
        script.run(step)
        for day in desk.days.values():
            window = desk.catalog.windows[day.window_id]
            for service in SERVICES:
                assert day.booked(service) + day.held(service, desk.now) <= day.capacity(window)
                waiting = [e for e in day.waiting if e.appointment_type == service]
                if waiting and all(h.live(desk.now) for h in day.holds.values()):
                    assert day.free(window, service, desk.now) == 0, "a free place while someone waits"
        offered = [e for e in entries if desk.offer_of(e)]
        waiting_ids = {e.waitlist_id for d in desk.days.values() for e in d.waiting}
        assert not set(offered) & waiting_ids, "an offered entry still waits in another queue"
        holders = [h.waitlist_id for d in desk.days.values() for h in d.holds.values() if h.waitlist_id]
        assert len(holders) == len(set(holders)), "an entry offered twice"
