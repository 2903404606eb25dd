"""The domain alone: no database, no broker, a fixed clock."""
from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain import catalog as cat
from domain import decisions
from domain import windowday as wd
from domain.errors import DomainError
from domain.timerules import parse_instant
from tests import builders

NOW = dt.datetime(2026, 3, 2, 6, 0, tzinfo=dt.timezone.utc)  # a Monday


def make_catalog(tz="UTC", max_slots=2, **settings_) -> cat.Catalog:
    return builders.catalog(tz, max_slots, **settings_)


def request(when: str, phone="+91 98400 00001", type_="General Checkup", **extra) -> dict:
    return builders.create_body(when, phone, type_, **extra)


class World:
    """The domain plus what the handler's unique tables would tell it, kept in memory for the test."""

    def __init__(self, catalog: cat.Catalog):
        self.catalog = catalog
        self.days: dict[str, wd.WindowDay] = {}
        self.where: dict[str, str] = {}
        self.n = 0

    def day(self, placement: wd.Placement) -> wd.WindowDay:
        return self.days.setdefault(placement.stream_id, wd.WindowDay(
            placement.window.window_id, placement.local_date.isoformat(),
            phone_region=self.catalog.settings.phone_region))

    def duplicate(self, phone: str, service_id: str, date: str, excluding=None) -> str | None:
        for day in self.days.values():
            if day.date == date:
                found = day.duplicate_of(phone, service_id, excluding)
                if found:
                    return found
        return None

    def create(self, req: dict, now=NOW) -> dict:
        placement = decisions.plan_create(self.catalog, req, now)
        day = self.day(placement)
        self.n += 1
        appointment_id = f"appt_{self.n:010d}"
        dup = self.duplicate(req["parent_phone"], placement.service.service_id, placement.local_date.isoformat())
        for e in decisions.decide_create(self.catalog, day, placement, req, appointment_id, now, dup):
            day.apply(e)
        self.where[appointment_id] = day.stream_id
        return day.appointments[appointment_id].as_dict()

    def patch(self, appointment_id: str, patch: dict, now=NOW) -> dict:
        source = self.days[self.where[appointment_id]]
        appointment = source.appointments[appointment_id]
        plan = decisions.plan_update(self.catalog, appointment, patch, now)
        if plan.unchanged:
            return appointment.as_dict()
        target = dup = None
        if plan.placement is not None:
            target = self.day(plan.placement)
            dup = self.duplicate(appointment.parent_phone, appointment.appointment_type,
                                 plan.placement.local_date.isoformat(), excluding=appointment_id)
        for stream, events in decisions.decide_update(self.catalog, source, appointment_id, patch, now, target,
                                                      plan.placement, dup).items():
            for e in events:
                self.days[stream].apply(e)
        if target is not None:
            self.where[appointment_id] = target.stream_id
        return self.days[self.where[appointment_id]].appointments[appointment_id].as_dict()


def code_of(fn, *args, **kwargs) -> str:
    with pytest.raises(DomainError) as raised:
        fn(*args, **kwargs)
    return raised.value.code


# -- create: each rule and its code, in order ------------------------------------------------------------

def test_a_booking_lands_in_the_matching_window_with_its_batch():
    world = World(make_catalog())
    a = world.create(request("2026-03-04T09:30:00Z", session="Morning"))
    assert a["status"] == "confirmed" and a["batch"] == "MA" and a["session"] == "Morning"
    assert a["date"] == "2026-03-04" and a["appointment_type"] == "svc-a" and a["token"] is None
    assert a["appointment_date"] == "2026-03-04T09:30:00.000Z"


def test_appointment_type_resolves_by_uuid_or_name_case_insensitively():
    c = make_catalog()
    assert c.resolve_service("svc-b").name == "Follow-up Visit"
    assert c.resolve_service("  follow-UP visit ").service_id == "svc-b"
    assert code_of(c.resolve_service, "Dentistry") == "INVALID_APPOINTMENT_TYPE"


def test_branch_is_inferred_only_when_there_is_one():
    c = make_catalog()
    assert c.resolve_branch(None).branch_id == "br-1"
    assert code_of(c.resolve_branch, "nope") == "NOT_FOUND"
    for e in cat.add_branch(c, "br-2", "Second"):
        c.apply(e)
    assert code_of(c.resolve_branch, None) == "VALIDATION_ERROR"


@pytest.mark.parametrize("when, settings_, code", [
    ("2026-03-04T09:30:00Z", {"enabled": False}, "BOOKING_DISABLED"),
    ("2026-03-01T09:30:00Z", {}, "PAST_APPOINTMENT"),
    ("2026-03-02T07:00:00Z", {}, "INSUFFICIENT_NOTICE"),
    ("2026-04-15T09:30:00Z", {}, "BEYOND_BOOKING_HORIZON"),
    ("2026-03-04T12:30:00Z", {}, "OUTSIDE_AVAILABILITY"),
    ("2026-03-04T11:00:00Z", {}, "OUTSIDE_AVAILABILITY"),  # end_time is exclusive
])
def test_placement_rules(when, settings_, code):
    world = World(make_catalog(**settings_))
    assert code_of(world.create, request(when)) == code


def test_disabled_booking_is_reported_before_timing_problems():
    world = World(make_catalog(enabled=False))
    assert code_of(world.create, request("2020-01-01T09:30:00Z")) == "BOOKING_DISABLED"


def test_session_must_match_the_window():
    world = World(make_catalog())
    assert code_of(world.create, request("2026-03-04T09:30:00Z", session="Evening")) == "OUTSIDE_AVAILABILITY"


def test_date_only_and_malformed_dates_are_validation_errors():
    assert code_of(parse_instant, "2026-06-15") == "VALIDATION_ERROR"
    assert code_of(parse_instant, "2026-13-45T10:00:00Z") == "VALIDATION_ERROR"
    assert parse_instant("2026-06-15T09:30:00") == dt.datetime(2026, 6, 15, 9, 30, tzinfo=dt.timezone.utc)
    assert parse_instant("2026-06-15T15:00:00+05:30") == dt.datetime(2026, 6, 15, 9, 30, tzinfo=dt.timezone.utc)


def test_closed_window_day_is_slot_inactive_and_a_disabled_window_too():
    c = make_catalog()
    world = World(c)
    placement = wd.place(c, c.services["svc-a"], c.branches["br-1"], parse_instant("2026-03-04T09:30:00Z"), None,
                         NOW)
    day = world.day(placement)
    for e in wd.adjust_day(day, "CLOSED", None):
        day.apply(e)
    assert code_of(world.create, request("2026-03-04T09:30:00Z")) == "SLOT_INACTIVE"
    for e in cat.disable_window(c, "w-thursday-Morning"):
        c.apply(e)
    assert code_of(world.create, request("2026-03-05T09:30:00Z")) == "SLOT_INACTIVE"


def test_duplicate_phone_type_and_date_is_refused_with_the_existing_id():
    world = World(make_catalog())
    first = world.create(request("2026-03-04T09:30:00Z", phone="+91-98400 00001"))
    with pytest.raises(DomainError) as raised:
        world.create(request("2026-03-04T17:30:00Z", phone="+919840000001"))  # another window, same date
    assert raised.value.code == "DUPLICATE_BOOKING"
    assert raised.value.extra["existing_appointment_id"] == first["appointment_id"]
    world.create(request("2026-03-04T09:45:00Z", phone="+919840000001", type_="Follow-up Visit"))  # other type
    world.create(request("2026-03-05T09:45:00Z", phone="+919840000001"))  # other date


def test_a_window_day_read_back_from_its_events_knows_its_phones_without_parsing_them_again():
    from domain import patients

    catalog, events, day = make_catalog(), [], None
    for n, phone in enumerate(("+91 98400 77001", "+0044 20 7946 0958")):  # "+0": its key depends on the region
        req = request(f"2026-03-04T09:{30 + n * 15}:00Z", phone=phone)
        placement = decisions.plan_create(catalog, req, NOW)
        day = day or wd.WindowDay(placement.window.window_id, placement.local_date.isoformat())
        for event in decisions.decide_create(catalog, day, placement, req, f"appt_{n:010d}", NOW, None):
            day.apply(event)
            events.append(event)
    patients._LEARNT.clear()
    patients._parsed_key.cache_clear()
    replayed = wd.WindowDay(day.window_id, day.date, phone_region="IN")
    replayed.fold(events)
    assert patients._parsed_key.cache_info().misses == 1  # only the "+0…" phone was parsed
    service = day.appointments["appt_0000000000"].appointment_type
    assert replayed.duplicate_of("+919840077001", service) == "appt_0000000000"  # however it is spaced
    assert patients.phone_key("+91 98400 77001", "US") == patients._parsed_key("+91 98400 77001", None)


def test_duplicate_rule_can_be_turned_off():
    world = World(make_catalog(prevent_duplicate_bookings=False))
    world.create(request("2026-03-04T09:30:00Z"))
    world.create(request("2026-03-04T09:40:00Z"))


def test_duplicate_wins_over_a_full_window():
    world = World(make_catalog(max_slots=1))
    world.create(request("2026-03-04T09:30:00Z", phone="1"))
    assert code_of(world.create, request("2026-03-04T09:40:00Z", phone="1")) == "DUPLICATE_BOOKING"
    assert code_of(world.create, request("2026-03-04T09:40:00Z", phone="2")) == "SLOT_FULL"


def test_capacity_is_counted_per_service_type():
    world = World(make_catalog(max_slots=1))
    world.create(request("2026-03-04T09:30:00Z", phone="1"))
    world.create(request("2026-03-04T09:30:00Z", phone="2", type_="Follow-up Visit"))
    assert code_of(world.create, request("2026-03-04T09:30:00Z", phone="3")) == "SLOT_FULL"


def test_tokens_count_up_per_window_day_and_are_never_reused():
    world = World(make_catalog(token_numbering=True, max_slots=5))
    a = world.create(request("2026-03-04T09:30:00Z", phone="1"))
    b = world.create(request("2026-03-04T09:30:00Z", phone="2"))
    assert (a["token"], b["token"]) == (1, 2)
    world.patch(b["appointment_id"], {"status": "cancelled"})
    c = world.create(request("2026-03-04T09:30:00Z", phone="3"))
    assert c["token"] == 3
    other = world.create(request("2026-03-04T17:30:00Z", phone="4"))
    assert other["token"] == 1


def test_batch_defaults_to_the_window_and_can_be_given():
    world = World(make_catalog())
    assert world.create(request("2026-03-04T09:30:00Z", phone="1", batch="MB"))["batch"] == "MB"


# -- DST ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("local_day", ["2026-03-07", "2026-03-09", "2026-10-31", "2026-11-02"])
def test_window_matches_local_wall_clock_on_both_sides_of_dst(local_day):
    """New York switches on 2026-03-08 and 2026-11-01; 09:30 local is 14:30Z in winter, 13:30Z in summer."""
    c = make_catalog(tz="America/New_York", max_advance_booking_days=365)
    world = World(c)
    day = dt.date.fromisoformat(local_day)
    winter = day < dt.date(2026, 3, 8) or day > dt.date(2026, 11, 1)
    utc_hour = 14 if winter else 13
    booked = world.create(request(f"{local_day}T{utc_hour}:30:00Z"))
    assert booked["date"] == local_day and booked["session"] == "Morning"
    assert code_of(world.create, request(f"{local_day}T{utc_hour - 1}:30:00Z", phone="2")) == \
        "OUTSIDE_AVAILABILITY"  # 08:30 local


def test_local_date_not_utc_date_decides_the_window_day():
    c = make_catalog(tz="Asia/Kolkata")
    world = World(c)
    # 2026-03-04 17:30 IST = 12:00Z; 2026-03-05 09:30 IST = 2026-03-05 04:00Z
    assert world.create(request("2026-03-05T04:00:00Z"))["date"] == "2026-03-05"


# -- PATCH: transitions, policies -----------------------------------------------------------------------

ALLOWED = [("confirmed", s) for s in ("in_progress", "completed", "cancelled", "no_show")] + \
          [("in_progress", "completed")]
REFUSED = [("in_progress", s) for s in ("cancelled", "no_show", "confirmed")] + \
          [(t, s) for t in ("completed", "cancelled", "no_show") for s in
           ("confirmed", "in_progress", "completed", "cancelled", "no_show") if s != t]


def _appointment_in(world: World, status: str) -> str:
    a = world.create(request("2026-03-04T09:30:00Z", phone=str(world.n + 100)))
    if status == "in_progress":
        world.patch(a["appointment_id"], {"status": "in_progress"})
    elif status != "confirmed":
        world.patch(a["appointment_id"], {"status": status})
    return a["appointment_id"]


@pytest.mark.parametrize("start, to", ALLOWED)
def test_allowed_transitions(start, to):
    world = World(make_catalog(max_slots=10))
    appointment_id = _appointment_in(world, start)
    assert world.patch(appointment_id, {"status": to})["status"] == to


@pytest.mark.parametrize("start, to", REFUSED)
def test_refused_transitions(start, to):
    world = World(make_catalog(max_slots=10))
    appointment_id = _appointment_in(world, start)
    assert code_of(world.patch, appointment_id, {"status": to}) == "INVALID_STATE_TRANSITION"


@pytest.mark.parametrize("terminal", ["completed", "cancelled", "no_show"])
def test_setting_the_same_terminal_status_again_changes_nothing(terminal):
    world = World(make_catalog(max_slots=10))
    appointment_id = _appointment_in(world, terminal)
    before = world.days[world.where[appointment_id]].appointments[appointment_id].as_dict()
    assert world.patch(appointment_id, {"status": terminal, "notes": "again"}) == before
    assert code_of(world.patch, appointment_id, {"notes": "late note"}) == "INVALID_STATE_TRANSITION"


def test_no_valid_field_is_a_validation_error():
    world = World(make_catalog())
    a = world.create(request("2026-03-04T09:30:00Z"))
    assert code_of(world.patch, a["appointment_id"], {}) == "VALIDATION_ERROR"


def test_cancel_frees_capacity_and_records_when_and_why():
    world = World(make_catalog(max_slots=1))
    a = world.create(request("2026-03-04T09:30:00Z", phone="1"))
    cancelled = world.patch(a["appointment_id"], {"status": "cancelled", "cancellation_reason": "fever"})
    assert cancelled["cancelled_at"] and cancelled["cancellation_reason"] == "fever"
    world.create(request("2026-03-04T09:30:00Z", phone="2"))


def test_cancel_policies():
    world = World(make_catalog(allow_cancellation=False))
    a = world.create(request("2026-03-04T09:30:00Z"))
    assert code_of(world.patch, a["appointment_id"], {"status": "cancelled"}) == "CANCELLATION_NOT_ALLOWED"
    world = World(make_catalog(cancellation_notice_hours=24))
    soon = world.create(request("2026-03-02T17:30:00Z"))  # 11.5 h ahead
    assert code_of(world.patch, soon["appointment_id"], {"status": "cancelled"}) == "CANCELLATION_NOTICE_TOO_SHORT"
    world = World(make_catalog(require_cancellation_reason=True))
    a = world.create(request("2026-03-04T09:30:00Z"))
    with pytest.raises(DomainError) as raised:
        world.patch(a["appointment_id"], {"status": "cancelled"})
    assert raised.value.code == "VALIDATION_ERROR" and "cancellation_reason" in raised.value.details


def test_complete_may_require_a_diagnosis():
    world = World(make_catalog(require_diagnosis_on_complete=True))
    a = world.create(request("2026-03-04T09:30:00Z"))
    with pytest.raises(DomainError) as raised:
        world.patch(a["appointment_id"], {"status": "completed"})
    assert raised.value.code == "VALIDATION_ERROR" and "diagnosis" in raised.value.details
    done = world.patch(a["appointment_id"], {"status": "completed", "diagnosis": "flu", "prescription": "rest"})
    assert done["status"] == "completed" and done["completed_at"] and done["diagnosis"] == "flu"


def test_reschedule_moves_capacity_and_follows_the_new_window():
    world = World(make_catalog(max_slots=1, token_numbering=True))
    a = world.create(request("2026-03-04T09:30:00Z", phone="1"))
    moved = world.patch(a["appointment_id"], {"appointment_date": "2026-03-05T17:30:00Z"})
    assert moved["status"] == "rescheduled" and moved["date"] == "2026-03-05"
    assert moved["session"] == "Evening" and moved["batch"] == "EA" and moved["token"] == 1
    world.create(request("2026-03-04T09:30:00Z", phone="2"))  # the old slot is free again
    assert code_of(world.create, request("2026-03-05T17:40:00Z", phone="3")) == "SLOT_FULL"


def test_reschedule_within_its_own_full_window_day_is_allowed():
    world = World(make_catalog(max_slots=1))
    a = world.create(request("2026-03-04T09:30:00Z"))
    moved = world.patch(a["appointment_id"], {"appointment_date": "2026-03-04T10:15:00Z", "status": "confirmed"})
    assert moved["appointment_date"] == "2026-03-04T10:15:00.000Z" and moved["status"] == "confirmed"


def test_reschedule_rules():
    world = World(make_catalog(max_slots=1))
    a = world.create(request("2026-03-04T09:30:00Z", phone="1"))
    world.create(request("2026-03-05T09:30:00Z", phone="2"))
    assert code_of(world.patch, a["appointment_id"], {"appointment_date": "2026-03-05T09:40:00Z"}) == "SLOT_FULL"
    assert code_of(world.patch, a["appointment_id"], {"appointment_date": "2026-03-05T12:40:00Z"}) == \
        "OUTSIDE_AVAILABILITY"
    world.create(request("2026-03-06T09:30:00Z", phone="1", type_="Follow-up Visit"))
    b = world.create(request("2026-03-06T17:30:00Z", phone="1"))
    # b (same phone and type) is on 03-06 in the evening: a may not join it on that date, in any window
    assert code_of(world.patch, a["appointment_id"], {"appointment_date": "2026-03-06T10:00:00Z"}) == \
        "DUPLICATE_BOOKING"
    assert code_of(world.patch, b["appointment_id"], {"appointment_date": "2026-03-04T10:00:00Z"}) == \
        "DUPLICATE_BOOKING"
    no = World(make_catalog(allow_reschedule=False))
    c = no.create(request("2026-03-04T09:30:00Z"))
    assert code_of(no.patch, c["appointment_id"], {"appointment_date": "2026-03-05T09:30:00Z"}) == \
        "RESCHEDULE_NOT_ALLOWED"
    assert code_of(no.patch, c["appointment_id"], {"status": "rescheduled"}) == "INVALID_STATE_TRANSITION"


# -- properties -----------------------------------------------------------------------------------------

DAYS = ["2026-03-03", "2026-03-04", "2026-03-05"]
TIMES = ["09:15", "10:30", "17:10", "18:45", "12:00"]
op = st.one_of(
    st.tuples(st.just("create"), st.sampled_from(DAYS), st.sampled_from(TIMES), st.integers(0, 5),
              st.sampled_from(["General Checkup", "Follow-up Visit"])),
    st.tuples(st.just("reschedule"), st.integers(0, 40), st.sampled_from(DAYS), st.sampled_from(TIMES)),
    st.tuples(st.just("cancel"), st.integers(0, 40)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(op, max_size=60), st.integers(1, 3), st.booleans())
def test_no_sequence_overbooks_duplicates_or_reuses_a_token(ops, max_slots, dedupe):
    world = World(make_catalog(max_slots=max_slots, token_numbering=True, prevent_duplicate_bookings=dedupe))
    ids: list[str] = []
    tokens_seen: dict[str, set[int]] = {}
    for step in ops:
        try:
            if step[0] == "create":
                _, day, time, phone, type_ = step
                a = world.create(request(f"{day}T{time}:00Z", phone=str(phone), type_=type_))
                ids.append(a["appointment_id"])
            elif step[0] == "reschedule" and ids:
                world.patch(ids[step[1] % len(ids)], {"appointment_date": f"{step[2]}T{step[3]}:00Z"})
            elif step[0] == "cancel" and ids:
                world.patch(ids[step[1] % len(ids)], {"status": "cancelled"})
        except DomainError as exc:
            assert exc.code in {"SLOT_FULL", "DUPLICATE_BOOKING", "OUTSIDE_AVAILABILITY", "INVALID_STATE_TRANSITION"}
        for stream, day in world.days.items():
            window = world.catalog.windows[day.window_id]
            for service_id in ("svc-a", "svc-b"):
                assert day.booked(service_id) <= day.capacity(window)
            tokens = [a.token for a in day.appointments.values() if a.token is not None]
            assert len(tokens) == len(set(tokens))
            # a token handed out once is never handed out again, even after a move or cancel
            issued = tokens_seen.setdefault(stream, set())
            new = {a.token for a in day.appointments.values()} - issued
            assert all(t > max(issued, default=0) for t in new)
            issued |= new
        if dedupe:
            active = [(a.parent_phone, a.appointment_type, a.date)
                      for day in world.days.values() for a in day.appointments.values() if a.active]
            assert len(active) == len(set(active))


# -- DESIGN §3 (statuses, phones) and §10 (patients, doctors) ----------------------------------------------

def test_a_rescheduled_appointment_can_be_confirmed_and_the_same_status_is_a_no_op():
    world = World(make_catalog(max_slots=10))
    a = world.create(request("2026-03-03T09:30:00Z"))
    assert world.patch(a["appointment_id"], {"status": "confirmed"})["version"] == 1  # nothing changed
    moved = world.patch(a["appointment_id"], {"appointment_date": "2026-03-04T09:30:00Z"})
    assert moved["status"] == "rescheduled"
    assert world.patch(a["appointment_id"], {"status": "confirmed"})["status"] == "confirmed"


@pytest.mark.parametrize("status", ["confirmed", "in_progress", "completed", "cancelled", "no_show"])
def test_a_status_given_with_a_new_date_wins(status):
    world = World(make_catalog(max_slots=10))
    a = world.create(request("2026-03-04T09:30:00Z"))
    after = world.patch(a["appointment_id"], {"appointment_date": "2026-03-05T17:30:00Z", "status": status})
    assert (after["status"], after["date"]) == (status, "2026-03-05")


def test_a_refused_status_with_a_new_date_moves_nothing():
    world = World(make_catalog(max_slots=10, allow_cancellation=False))
    a = world.create(request("2026-03-04T09:30:00Z"))
    assert code_of(world.patch, a["appointment_id"], {"appointment_date": "2026-03-05T17:30:00Z",
                                                      "status": "cancelled"}) == "CANCELLATION_NOT_ALLOWED"
    assert world.days[world.where[a["appointment_id"]]].date == "2026-03-04"


def test_phones_compare_in_e164_and_patients_are_one_phone_and_one_name():
    from domain.patients import patient_id, phone_key
    assert phone_key("+91 98400-00001") == phone_key("09840000001", "IN") == "+919840000001"
    assert phone_key("09840000001") != "+919840000001"  # without a region, a national number is just digits
    assert patient_id("org", "+919840000001", "Aadhi") == patient_id("org", "09840000001", " aadhi ", "IN")
    assert patient_id("org", "+919840000001", "Aadhi") != patient_id("org", "+919840000001", "Meera")
    assert patient_id("org", "+919840000001", "Aadhi") != patient_id("other", "+919840000001", "Aadhi")


def test_the_duplicate_rule_reads_national_numbers_in_the_orgs_region():
    world = World(make_catalog(max_slots=10, phone_region="IN"))
    first = world.create(request("2026-03-03T09:30:00Z", phone="+919840000001"))
    placement = decisions.plan_create(world.catalog, request("2026-03-03T09:45:00Z", phone="09840000001"), NOW)
    day = world.day(placement)
    assert day.duplicate_of("09840000001", placement.service.service_id) == first["appointment_id"]


def test_a_doctor_named_in_any_case_or_by_id_is_linked():
    c = make_catalog(max_slots=10)
    for e in cat.register_doctor(c, "doc_aaaaaaaaaa", "Dr. Carlos Ramírez", "Cardiología", []):
        c.apply(e)
    world = World(c)
    by_name = world.create(request("2026-03-03T09:30:00Z", assigned_doctor="dr.  CARLOS ramírez"))
    by_id = world.create(request("2026-03-03T10:30:00Z", phone="+2", assigned_doctor="doc_aaaaaaaaaa"))
    free = world.create(request("2026-03-03T10:30:00Z", phone="+3", assigned_doctor="Dr. Who"))
    assert (by_name["doctor_id"], by_id["doctor_id"], free["doctor_id"]) == ("doc_aaaaaaaaaa",) * 2 + (None,)
    assert by_id["assigned_doctor"] == "Dr. Carlos Ramírez"


def test_an_instant_prints_the_same_from_any_zone_and_naive_times_are_not_mistaken_for_it():
    from domain.timerules import iso_utc, zone
    instant = dt.datetime(2026, 6, 15, 9, 30, tzinfo=dt.timezone.utc)
    assert iso_utc(instant) == iso_utc(instant.astimezone(zone("Asia/Kolkata"))) == "2026-06-15T09:30:00.000Z"
    assert iso_utc(instant + dt.timedelta(milliseconds=1)) == "2026-06-15T09:30:00.001Z"
    naive = dt.datetime(2026, 6, 15, 9, 30)  # its wall clock is the machine's, never the cached UTC instant's
    assert iso_utc(naive) == naive.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds")[:-6] + "Z"
