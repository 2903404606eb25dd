"""Builders shared by unit and end-to-end tests: one create body, one catalog."""
from __future__ import annotations

from typing import Any

from domain import catalog as cat
from domain.timerules import WEEKDAYS


def create_body(when: str, phone: str = "+919840000001", type_: str = "General Checkup", name: str = "Aadhi",
                **extra: Any) -> dict[str, Any]:
    """A valid POST /v1/appointments body (and Kafka create payload) at instant `when`."""
    return {"appointment_type": type_, "appointment_date": when, "patient_name": name, "parent_phone": phone,
            **extra}


def catalog(tz: str = "UTC", max_slots: int = 2, **settings: Any) -> cat.Catalog:
    """An org folded from its events: two services, one branch, Morning 09–11 and Evening 17–19 every day."""
    c = cat.Catalog(org_id="org")
    for e in cat.create_org("org", "Clinic", tz):
        c.apply(e)
    if settings:
        for e in cat.change_settings(c, settings):
            c.apply(e)
    for sid, name in (("svc-a", "General Checkup"), ("svc-b", "Follow-up Visit")):
        for e in cat.add_service(c, sid, name, 30):
            c.apply(e)
    for e in cat.add_branch(c, "br-1", "Main"):
        c.apply(e)
    for day in WEEKDAYS:
        for session, start, end in (("Morning", "09:00", "11:00"), ("Evening", "17:00", "19:00")):
            w = cat.Window(f"w-{day}-{session}", "br-1", day, session, start, end, max_slots, None, session[0] + "A")
            for e in cat.create_window(c, w):
                c.apply(e)
    return c
