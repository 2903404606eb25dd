"""Window-day snapshots in the domain alone: a day read back from its snapshot is the day it was taken of, and
decides everything after it exactly as the day that was never put away (no database)."""
from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from domain import windowday as wd
from domain.errors import DomainError
from tests.unit import test_domain, test_holds
from tests.unit.test_domain import World, make_catalog, request
from tests.unit.test_holds import Desk, Script


def restored(day: wd.WindowDay) -> wd.WindowDay:
    """The day as a fresh process reads it: the snapshot through JSON text, as stored."""
    return wd.WindowDay.from_snapshot(day.stream_id, orjson.loads(orjson.dumps(day.snapshot())))


def state(day: wd.WindowDay) -> tuple:
    """Everything a day decides by, its own indexes included."""
    return (day.stream_id, day.version, day.status, day.max_slots, day.last_token, day.phone_region,
            day.appointments, day.holds, day.waiting, {k: v for k, v in day._holders.items() if v},
            {k: n for k, n in day._active.items() if n})


def alike(day: wd.WindowDay) -> tuple:
    """`state` but for hold ids, which a waitlist offer draws at random."""
    *head, holds, waiting, holders, active = state(day)
    return (*head, sorted(tuple(h.as_dict().values())[1:] for h in holds.values()), waiting, holders, active)


def put_away(days: dict[str, wd.WindowDay]) -> None:
    for stream, day in days.items():
        days[stream] = restored(day)
        assert state(days[stream]) == state(day)


@settings(max_examples=150, deadline=None)
@given(st.lists(test_holds.op, max_size=50), st.integers(0, 50), st.integers(1, 3))
def test_holds_and_the_waitlist_carry_on_from_a_snapshot_as_if_never_put_away(ops, at, max_slots):
    kept, snapped = (Script(Desk(max_slots=max_slots, waitlist_offer_minutes=2)) for _ in range(2))
    for n, step in enumerate(ops):
        if n == at:
            put_away(snapped.desk.days)
        assert kept.run(step) == snapped.run(step)
        assert [alike(d) for d in kept.desk.days.values()] == [alike(d) for d in snapped.desk.days.values()]


def run(world: World, step, ids: list[str]) -> str | None:
    try:
        if step[0] == "create":
            _, day, time, phone, type_ = step
            ids.append(world.create(request(f"{day}T{time}:00Z", phone=f"+91 98400 0000{phone}", type_=type_))
                       ["appointment_id"])
        elif step[0] == "reschedule" and ids:
            world.patch(ids[step[1] % len(ids)], {"appointment_date": f"{step[2]}T{step[3]}:00Z"})
        elif step[0] == "cancel" and ids:
            world.patch(ids[step[1] % len(ids)], {"status": "cancelled"})
    except DomainError as exc:
        return exc.code
    return None


@settings(max_examples=150, deadline=None)
@given(st.lists(test_domain.op, max_size=60), st.integers(0, 60), st.integers(1, 3))
def test_bookings_moves_and_cancellations_carry_on_from_a_snapshot_as_if_never_put_away(ops, at, max_slots):
    """Duplicates (the phone index is read back, not rebuilt), capacity per service and tokens included."""
    worlds = [World(make_catalog(max_slots=max_slots, token_numbering=True)) for _ in range(2)]
    ids: tuple[list[str], list[str]] = ([], [])
    for n, step in enumerate(ops):
        if n == at:
            put_away(worlds[1].days)
        assert run(worlds[0], step, ids[0]) == run(worlds[1], step, ids[1])
        assert [state(d) for d in worlds[0].days.values()] == [state(d) for d in worlds[1].days.values()]


def test_a_snapshot_carries_the_duplicate_rules_index_of_phones():
    world = World(make_catalog(max_slots=5))
    first = world.create(request("2026-03-03T09:15:00Z", phone="+91 98400 00001"))
    day = world.days[wd.stream_id(first["window_id"], "2026-03-03")]
    snapshot = day.snapshot()
    assert snapshot["holders"] == [["+919840000001", first["appointment_type"], [first["appointment_id"]]]]
    back = restored(day)
    assert back.duplicate_of("+91 98400-00001", first["appointment_type"]) == first["appointment_id"]


def test_the_format_names_every_field_a_snapshot_lays_out():
    """A record gaining a field changes the format, so snapshots taken before are ignored, not misread."""
    assert wd.SNAPSHOT_FORMAT.startswith("wd1-") and len(wd.SNAPSHOT_FORMAT) == 16
