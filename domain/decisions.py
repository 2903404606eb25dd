"""The domain's entry points for appointment commands: each caller (the handler, the batcher, the tests)
runs the same sequence by calling these, once each.

A decision needs facts the aggregate cannot see (the window-day a new time lands in, an active booking with
the same phone elsewhere), so each command is two steps: `plan_…` (no window-day needed) tells the caller
what to load; `decide_…` makes the events.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from domain import events as ev
from domain import windowday as wd
from domain.appointment import Appointment
from domain.catalog import Catalog
from domain.timerules import parse_instant


def plan_create(catalog: Catalog, request: dict[str, Any], now: datetime) -> wd.Placement:
    """Rules 3–7: the type, the branch, the time, and the window-day it lands in."""
    service = catalog.resolve_service(request["appointment_type"])
    branch = catalog.resolve_branch(request.get("branch_id"))
    start = parse_instant(request["appointment_date"])
    return wd.place(catalog, service, branch, start, request.get("session"), now)


def decide_create(catalog: Catalog, day: wd.WindowDay, placement: wd.Placement, request: dict[str, Any],
                  appointment_id: str, now: datetime, duplicate_of: str | None = None) -> list[ev.Event]:
    """Rules 8–10 on the window-day, then the booking. `duplicate_of`: an active booking elsewhere with the
    same phone, type and local date."""
    return wd.book(catalog, day, placement, request, appointment_id, now, duplicate_of)


@dataclass(frozen=True)
class UpdatePlan:
    unchanged: bool  # the request leaves the record as it is (the same terminal status again)
    placement: wd.Placement | None = None  # where a reschedule lands

    @property
    def stream_id(self) -> str | None:
        return None if self.placement is None else self.placement.stream_id


def plan_update(catalog: Catalog, appointment: Appointment, patch: dict[str, Any], now: datetime,
                strict: bool = False) -> UpdatePlan:
    """Transitions and policies that need no target window-day, and rules 6–7 for a new appointment_date.
    `strict`: SaludYa's rules (a cancellation needs a reason, a completion a diagnosis)."""
    if not wd.check_update(catalog, appointment, patch, now, strict):
        return UpdatePlan(unchanged=True)
    if "appointment_date" not in patch:
        return UpdatePlan(unchanged=False)
    return UpdatePlan(False, wd.reschedule_placement(catalog, appointment, patch, now))


def decide_update(catalog: Catalog, source: wd.WindowDay, appointment_id: str, patch: dict[str, Any], now: datetime,
                  target: wd.WindowDay | None = None, placement: wd.Placement | None = None,
                  duplicate_of: str | None = None) -> dict[str, list[ev.Event]]:
    """Events per stream id for a planned update; `target` is the window-day of `placement` (the source itself
    when the new time is on the same window-day)."""
    return wd.update(catalog, source, appointment_id, patch, now, target, placement, duplicate_of)
