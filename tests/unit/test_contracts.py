"""The contracts shipped to Kafka consumers: generated JSON Schemas are current, and every event the domain
writes matches its published payload schema. No I/O."""
from __future__ import annotations

import re

import pytest
from pydantic import TypeAdapter, ValidationError

from domain import catalog as cat
from domain import events as ev
from domain import windowday as wd
from domain.timerules import parse_instant
from schemas.events import EVENT_PAYLOADS
from schemas.export import OUT, generate
from schemas.http import DOCUMENTED_DAY, Day
from schemas.kafka import COMMAND, COMMAND_TYPES
from services.commands import BY_TYPE
from tests.unit.test_domain import NOW, make_catalog, request


def test_committed_json_schemas_match_the_models():
    generated = generate()
    on_disk = {str(p.relative_to(OUT)): p.read_text() for p in OUT.rglob("*.json")}
    stale = sorted(name for name in generated if on_disk.get(name) != generated[name])
    extra = sorted(set(on_disk) - set(generated))
    assert not stale and not extra, (f"run `slotledger schemas export`: stale {stale}, no longer generated {extra}")


def test_every_event_type_has_a_payload_schema_at_its_version():
    assert set(EVENT_PAYLOADS) == set(ev.EVENT_TYPES)
    for event_type, cls in ev.EVENT_TYPES.items():
        assert cls.version in EVENT_PAYLOADS[event_type], event_type


def test_every_command_type_is_dispatched_and_its_schema_refuses_unknown_fields():
    assert set(BY_TYPE) == set(COMMAND_TYPES)
    body = {"command_id": "7a0c3c2e-8d7e-4c55-9d43-2a51f3a0b111", "org_id": "1b2c3d4e-0000-4000-8000-000000000000",
            "type": "cancel_appointment", "appointment_id": "appt_abcdefghij"}
    assert COMMAND.validate_python(body).payload.cancellation_reason is None
    try:
        COMMAND.validate_python({**body, "payload": {"reason_for_cancel": "x"}})
    except Exception as exc:
        assert "reason_for_cancel" in str(exc)
    else:
        raise AssertionError("an unknown payload field was accepted")


def test_the_events_the_domain_writes_match_their_schemas():
    written: list[ev.Event] = []
    catalog = make_catalog(max_slots=5)
    written += cat.create_org("org2", "Other", "Asia/Kolkata")
    written += cat.change_settings(catalog, {"token_numbering": True, "min_notice_hours": 1.5})
    for e in written[-1:]:
        catalog.apply(e)
    window = catalog.window("w-monday-Morning")
    written += cat.change_window(catalog, window.window_id, {"max_slots": 6, "batch": "MX"})
    written += cat.disable_window(catalog, "w-sunday-Evening")
    for added in (cat.add_service(catalog, "svc-c", "Vaccination", 10), cat.add_branch(catalog, "br-2", "Annex")):
        written += added
        for e in added:
            catalog.apply(e)
    written += cat.create_window(catalog, cat.Window("w-annex", "br-2", "monday", "Afternoon", "13:00", "15:00", 4,
                                                     "svc-c", None))
    registered = cat.register_doctor(catalog, "doc_aaaaaaaaaa", "Dr. Carlos Ramírez", "Cardiología", ["br-2"])
    written += registered
    catalog.apply(registered[0])
    written += cat.change_doctor(catalog, "doc_aaaaaaaaaa", {"specialty": "Cardiology", "branch_ids": ["br-1"]})

    def place(when: str) -> wd.Placement:
        svc = catalog.resolve_service("General Checkup")
        return wd.place(catalog, svc, catalog.resolve_branch("br-1"), parse_instant(when), None, NOW)

    days: dict[str, wd.WindowDay] = {}

    def day_of(placement: wd.Placement) -> wd.WindowDay:
        return days.setdefault(placement.stream_id, wd.WindowDay(placement.window.window_id,
                                                                 placement.local_date.isoformat()))

    def fold(by_stream: dict[str, list[ev.Event]]) -> None:
        for stream, events in by_stream.items():
            for e in events:
                days[stream].apply(e)
                written.append(e)

    first = place("2026-03-03T09:30:00Z")
    fold({first.stream_id: wd.book(catalog, day_of(first), first, request("2026-03-03T09:30:00Z"), "appt_aaaaaaaaaa", NOW)})
    appointment = days[first.stream_id].appointments["appt_aaaaaaaaaa"]
    fold(wd.update(catalog, days[first.stream_id], "appt_aaaaaaaaaa", {"notes": "n", "follow_up_date": "2026-04-01",
                                                            "send_notification": True}, NOW, None, None))
    target = place("2026-03-04T17:30:00Z")
    day_of(target)
    fold(wd.update(catalog, days[first.stream_id], "appt_aaaaaaaaaa", {"appointment_date": "2026-03-04T17:30:00Z"}, NOW,
                   days[target.stream_id], target))
    fold(wd.update(catalog, days[target.stream_id], "appt_aaaaaaaaaa", {"status": "cancelled", "cancellation_reason": "x"},
                   NOW, None, None))
    written += wd.adjust_day(days[target.stream_id], "CLOSED", 3)
    assert appointment.appointment_id == "appt_aaaaaaaaaa"

    written += _hold_and_waitlist_events()

    from domain.patients import registration
    written.append(registration(next(e for e in written if isinstance(e, ev.AppointmentBooked))))
    seen = set()
    for event in written:
        EVENT_PAYLOADS[event.type][event.version].model_validate(event.data())
        seen.add(event.type)
    assert seen == set(ev.EVENT_TYPES)


def _hold_and_waitlist_events() -> list[ev.Event]:
    """Every hold and waitlist event type, from the decisions that make them."""
    import datetime as dt

    from tests.unit.test_holds import Desk

    desk = Desk(max_slots=1)
    out: list[ev.Event] = []
    original = desk.commit
    desk.commit = lambda by_stream: out.extend(original(by_stream)) or out  # record what each decision wrote
    held = desk.hold(phone="+919840000001")
    desk.release(held)
    desk.confirm(desk.hold(), parent_phone="+919840000002")
    desk.join("Either", session=None)  # Morning is full, Evening free: offered there, leaves the Morning queue
    desk.join("Next", session="Evening")
    desk.now += dt.timedelta(minutes=16)
    desk.sweep()  # the offer expires (hold.expired, waitlist.offer_expired) and passes to Next
    desk.leave(desk.join("Leaver"))
    return out


@pytest.mark.parametrize("text", ["1999-12-31", "2000-01-01", "2026-12-01", "2199-12-31", "2200-01-01", "0001-01-01",
                                  "9999-12-31", "20261201", "2026-12-1"])
def test_the_documented_date_pattern_refuses_what_the_service_refuses(text):
    """A client that validates against the OpenAPI document or the commands' schema learns the year range too, not
    only the form: the service refuses a date outside it as VALIDATION_ERROR."""
    try:
        TypeAdapter(Day).validate_python(text)
        accepted = True
    except ValidationError:
        accepted = False
    assert bool(re.match(DOCUMENTED_DAY, text)) == accepted, text
