"""The records a window-day keeps besides its appointments (DESIGN §8): live holds, and the waitlist entries
queued for its places. Events carry them as plain JSON (`as_dict()`); the domain keeps them typed and frozen.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from domain.timerules import parse_instant


@dataclass(frozen=True, slots=True)
class Hold:
    """A place kept until `expires_at` (UTC ISO): it counts against capacity while `now < expires_at`, and not a
    moment longer, whether or not the sweeper has appended hold.expired yet."""
    hold_id: str  # hold_…
    appointment_type: str  # the service id
    branch_id: str
    window_id: str
    date: str  # local YYYY-MM-DD
    session: str
    appointment_date: str  # UTC ISO: the start the booking will have
    expires_at: str
    created_at: str
    patient_name: str | None = None
    parent_phone: str | None = None
    assigned_doctor: str | None = None
    duration_minutes: int | None = None
    external_reference_id: str | None = None
    notes: str | None = None
    reason: str | None = None
    batch: str | None = None
    waitlist_id: str | None = None  # set when the hold is a waitlist offer

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Hold":
        return cls(**{name: data.get(name) for name in HOLD_FIELDS})

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def live(self, now: datetime) -> bool:
        return now < parse_instant(self.expires_at, "expires_at")

    def request(self) -> dict[str, Any]:
        """The create body this hold was placed with (what a confirmation may complete)."""
        return {name: getattr(self, name) for name in REQUEST_FIELDS}


REQUEST_FIELDS = ("patient_name", "parent_phone", "assigned_doctor", "duration_minutes", "external_reference_id",
                  "notes", "reason", "batch")
HOLD_FIELDS = tuple(f.name for f in dataclasses.fields(Hold))


@dataclass(frozen=True, slots=True)
class WaitlistEntry:
    """Someone waiting for a place of `appointment_type` on `date`, in the queues of `streams` (the matching
    window-days), in join order."""
    waitlist_id: str  # wl_…
    appointment_type: str
    branch_id: str
    date: str
    session: str | None
    patient_name: str
    parent_phone: str
    external_reference_id: str | None
    notes: str | None
    joined_at: str
    streams: tuple[str, ...]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "WaitlistEntry":
        return cls(**{**{name: data.get(name) for name in ENTRY_FIELDS}, "streams": tuple(data["streams"])})

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "streams": list(self.streams)}


ENTRY_FIELDS = tuple(f.name for f in dataclasses.fields(WaitlistEntry))
