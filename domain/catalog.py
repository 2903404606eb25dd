"""An org's configuration: settings, services, branches and calendar windows, folded from their events."""
from __future__ import annotations

import dataclasses
import secrets
import string
import uuid
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time
from typing import Any

from domain import events as ev
from domain.errors import DomainError, not_found, validation
from domain.patients import valid_region
from domain.timerules import WEEKDAYS, parse_hhmm, zone

SESSIONS = ("Morning", "Afternoon", "Evening")


@dataclass(frozen=True)
class OrgSettings:
    enabled: bool = True
    timezone: str = "UTC"
    buffer_time_minutes: int = 15
    max_advance_booking_days: int = 30
    min_notice_hours: float = 2
    allow_reschedule: bool = True
    allow_cancellation: bool = True
    cancellation_notice_hours: float = 24
    prevent_duplicate_bookings: bool = True
    token_numbering: bool = False
    require_cancellation_reason: bool = False
    require_diagnosis_on_complete: bool = False
    phone_region: str | None = None  # ISO 3166-1 alpha-2: how national phone numbers are read
    waitlist_offer_minutes: int = 15  # how long a freed place is held for the first waiting entry (DESIGN §8)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SETTING_NAMES = tuple(f.name for f in dataclasses.fields(OrgSettings))
# DESIGN §3: no setting can be set to a value that makes later commands fail.
SETTING_BOUNDS = {"buffer_time_minutes": (0, 1440), "max_advance_booking_days": (1, 3650),
                  "min_notice_hours": (0, 8760), "cancellation_notice_hours": (0, 8760),
                  "waitlist_offer_minutes": (1, 1440)}


@dataclass(frozen=True)
class Service:
    service_id: str
    name: str
    duration_minutes: int


@dataclass(frozen=True)
class Doctor:
    doctor_id: str  # doc_…
    name: str
    specialty: str | None = None
    branch_ids: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "branch_ids": list(self.branch_ids)}


@dataclass(frozen=True)
class Branch:
    branch_id: str
    name: str


@dataclass(frozen=True)
class Window:
    window_id: str
    branch_id: str
    day_of_week: str
    session: str
    start_time: str  # HH:MM, wall clock in the org's timezone
    end_time: str
    max_slots: int
    service_id: str | None = None
    batch: str | None = None
    status: str = "OPEN"  # the default for every date; one date can differ (schedule tracking)
    enabled: bool = True  # disabled: closed for all future dates

    def covers(self, wall: time) -> bool:
        return parse_hhmm(self.start_time, "start_time") <= wall < parse_hhmm(self.end_time, "end_time")

    def occurs_on(self, day: date) -> bool:
        return WEEKDAYS[day.weekday()] == self.day_of_week

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Catalog:
    org_id: str
    name: str = ""
    settings: OrgSettings = field(default_factory=OrgSettings)
    services: dict[str, Service] = field(default_factory=dict)
    branches: dict[str, Branch] = field(default_factory=dict)
    windows: dict[str, Window] = field(default_factory=dict)
    doctors: dict[str, Doctor] = field(default_factory=dict)
    exists: bool = False
    # windows_at answers, by its arguments: every booking asks, and a clinic's bookings fall on few moments
    _covering: dict[tuple, list[Window]] = field(default_factory=dict, repr=False, compare=False)

    # -- folding events ------------------------------------------------------------------------------
    def apply(self, event: ev.Event) -> None:
        self._covering.clear()
        match event:
            case ev.OrgCreated():
                self.exists = True
                self.name = event.name
                self.settings = OrgSettings(**event.settings)
            case ev.OrgSettingsChanged():
                self.settings = replace(self.settings, **event.changes)
            case ev.ServiceAdded():
                self.services[event.service_id] = Service(event.service_id, event.name, event.duration_minutes)
            case ev.BranchAdded():
                self.branches[event.branch_id] = Branch(event.branch_id, event.name)
            case ev.WindowCreated():
                self.windows[event.window["window_id"]] = Window(**event.window)
            case ev.WindowChanged():
                self.windows[event.window_id] = replace(self.windows[event.window_id], **event.changes)
            case ev.WindowDisabled():
                self.windows[event.window_id] = replace(self.windows[event.window_id], enabled=False)
            case ev.DoctorRegistered():
                self.doctors[event.doctor_id] = Doctor(event.doctor_id, event.name, event.specialty,
                                                       tuple(event.branch_ids))
            case ev.DoctorChanged():
                changes = {k: tuple(v) if k == "branch_ids" else v for k, v in event.changes.items()}
                self.doctors[event.doctor_id] = replace(self.doctors[event.doctor_id], **changes)

    def evolved(self, events: list[ev.Event]) -> "Catalog":
        """A copy with `events` folded in; this catalog is left as it is (it may be shared, cached)."""
        after = replace(self, services=dict(self.services), branches=dict(self.branches), windows=dict(self.windows),
                        doctors=dict(self.doctors), _covering={})
        for event in events:
            after.apply(event)
        return after

    # -- lookups -------------------------------------------------------------------------------------
    def resolve_service(self, value: str) -> Service:
        """A service UUID or its name, case-insensitively (rule 3)."""
        if value in self.services:
            return self.services[value]
        wanted = value.strip().casefold()
        for service in self.services.values():
            if service.name.casefold() == wanted or service.service_id.casefold() == wanted:
                return service
        raise DomainError("INVALID_APPOINTMENT_TYPE", f"appointment_type '{value}' does not match any configured "
                          "service", {"appointment_type": value, "available": sorted(
                              s.name for s in self.services.values())})

    def resolve_branch(self, branch_id: str | None) -> Branch:
        """The given branch, or the only one (rule 4)."""
        if branch_id is None:
            if len(self.branches) == 1:
                return next(iter(self.branches.values()))
            raise validation("branch_id", "is required when the organization has more than one branch"
                             if self.branches else "is required: the organization has no branch yet")
        if branch_id not in self.branches:
            raise not_found("branch", branch_id)
        return self.branches[branch_id]

    def doctor(self, doctor_id: str) -> Doctor:
        if doctor_id not in self.doctors:
            raise not_found("doctor", doctor_id)
        return self.doctors[doctor_id]

    def resolve_doctor(self, value: str | None) -> Doctor | None:
        """A registered doctor by id, or by name with case and extra spaces ignored; None: free text (HuskyVoice
        takes any name or identifier)."""
        if not value or not value.strip():
            return None
        if value in self.doctors:
            return self.doctors[value]
        wanted = " ".join(value.split()).casefold()
        return next((d for d in self.doctors.values() if " ".join(d.name.split()).casefold() == wanted), None)

    def specialty(self, doctor_id: str | None, service: Service | None) -> str | None:
        """What SaludYa calls the appointment's specialty: the doctor's, when known; else the service's name."""
        doctor = self.doctors.get(doctor_id) if doctor_id else None
        if doctor is not None and doctor.specialty:
            return doctor.specialty
        return service.name if service else None

    def window(self, window_id: str) -> Window:
        if window_id not in self.windows:
            raise not_found("calendar window", window_id)
        return self.windows[window_id]

    def windows_at(self, branch_id: str, local_moment: datetime, service_id: str | None,
                   session: str | None) -> list[Window]:
        """Windows of the branch covering this local wall-clock moment, in a stable order (rule 7)."""
        weekday = WEEKDAYS[local_moment.weekday()]
        wall = local_moment.time().replace(tzinfo=None)
        asked = (branch_id, weekday, wall, service_id, session)
        cached = self._covering.get(asked)
        if cached is not None:
            return list(cached)
        found = [
            w for w in self.windows.values()
            if w.branch_id == branch_id and w.day_of_week == weekday and w.covers(wall)
            and (w.service_id is None or service_id is None or w.service_id == service_id)
            and (session is None or w.session.casefold() == session.casefold())
        ]
        self._covering[asked] = sorted(found, key=lambda w: (w.start_time, w.window_id))
        return list(self._covering[asked])


# -- decisions on configuration ------------------------------------------------------------------------

def new_id() -> str:
    return str(uuid.uuid4())


def new_doctor_id() -> str:
    return "doc_" + "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(10))


def create_org(org_id: str, name: str, timezone: str) -> list[ev.Event]:
    if not name.strip():
        raise validation("name", "must not be empty")
    zone(timezone)
    return [ev.OrgCreated(org_id=org_id, name=name.strip(),
                          settings=OrgSettings(timezone=timezone).as_dict())]


def change_settings(catalog: Catalog, changes: dict[str, Any]) -> list[ev.Event]:
    unknown = set(changes) - set(SETTING_NAMES)
    if unknown:
        raise DomainError("VALIDATION_ERROR", "unknown settings", {name: "unknown field" for name in sorted(unknown)})
    if "timezone" in changes:
        zone(changes["timezone"])
    for name, (low, high) in SETTING_BOUNDS.items():
        if name in changes and not low <= changes[name] <= high:
            raise validation(name, f"must be between {low:g} and {high:g}")
    if changes.get("phone_region") is not None and not valid_region(changes["phone_region"]):
        raise validation("phone_region", "must be an ISO 3166-1 alpha-2 region code, e.g. IN")
    effective = {k: v for k, v in changes.items() if getattr(catalog.settings, k) != v}
    return [ev.OrgSettingsChanged(changes=effective)] if effective else []


def add_service(catalog: Catalog, service_id: str, name: str, duration_minutes: int) -> list[ev.Event]:
    if not name.strip():
        raise validation("name", "must not be empty")
    if any(s.name.casefold() == name.strip().casefold() for s in catalog.services.values()):
        raise DomainError("CONFLICT", f"a service named '{name}' already exists", {"name": "already exists"})
    if duration_minutes <= 0:
        raise validation("duration_minutes", "must be positive")
    return [ev.ServiceAdded(service_id=service_id, name=name.strip(), duration_minutes=duration_minutes)]


def register_doctor(catalog: Catalog, doctor_id: str, name: str, specialty: str | None,
                    branch_ids: list[str]) -> list[ev.Event]:
    if not name.strip():
        raise validation("name", "must not be empty")
    for branch_id in branch_ids:
        if branch_id not in catalog.branches:
            raise not_found("branch", branch_id)
    if catalog.resolve_doctor(name) is not None:
        raise DomainError("CONFLICT", f"a doctor named '{name.strip()}' is already registered", {"name": "already exists"})
    return [ev.DoctorRegistered(doctor_id=doctor_id, name=" ".join(name.split()), specialty=specialty,
                                branch_ids=list(branch_ids))]


def change_doctor(catalog: Catalog, doctor_id: str, changes: dict[str, Any]) -> list[ev.Event]:
    current = catalog.doctor(doctor_id)
    if "name" in changes:
        if not changes["name"].strip():
            raise validation("name", "must not be empty")
        changes = {**changes, "name": " ".join(changes["name"].split())}
        other = catalog.resolve_doctor(changes["name"])
        if other is not None and other.doctor_id != doctor_id:
            raise DomainError("CONFLICT", f"a doctor named '{changes['name']}' is already registered",
                              {"name": "already exists"})
    for branch_id in changes.get("branch_ids", ()):
        if branch_id not in catalog.branches:
            raise not_found("branch", branch_id)
    effective = {k: v for k, v in changes.items()
                 if (tuple(v) if k == "branch_ids" else v) != getattr(current, k)}
    return [ev.DoctorChanged(doctor_id=doctor_id, changes=effective)] if effective else []


def add_branch(catalog: Catalog, branch_id: str, name: str) -> list[ev.Event]:
    if not name.strip():
        raise validation("name", "must not be empty")
    return [ev.BranchAdded(branch_id=branch_id, name=name.strip())]


def _check_window(catalog: Catalog, window: Window) -> None:
    if window.branch_id not in catalog.branches:
        raise not_found("branch", window.branch_id)
    if window.day_of_week not in WEEKDAYS:
        raise validation("day_of_week", "must be one of " + ", ".join(WEEKDAYS))
    if window.session not in SESSIONS:
        raise validation("session", "must be one of " + ", ".join(SESSIONS))
    if parse_hhmm(window.start_time, "start_time") >= parse_hhmm(window.end_time, "end_time"):
        raise validation("end_time", "must be after start_time")
    if window.max_slots < 0:
        raise validation("max_slots", "must not be negative")
    if window.service_id is not None and window.service_id not in catalog.services:
        raise DomainError("INVALID_APPOINTMENT_TYPE", f"service_id '{window.service_id}' is not a configured "
                          "service", {"service_id": "unknown service"})
    if window.status not in ("OPEN", "CLOSED"):
        raise validation("status", "must be OPEN or CLOSED")


def create_window(catalog: Catalog, window: Window) -> list[ev.Event]:
    _check_window(catalog, window)
    return [ev.WindowCreated(window=window.as_dict())]


def change_window(catalog: Catalog, window_id: str, changes: dict[str, Any]) -> list[ev.Event]:
    current = catalog.window(window_id)
    _check_window(catalog, replace(current, **changes))
    effective = {k: v for k, v in changes.items() if getattr(current, k) != v}
    return [ev.WindowChanged(window_id=window_id, changes=effective)] if effective else []


def disable_window(catalog: Catalog, window_id: str) -> list[ev.Event]:
    window = catalog.window(window_id)
    return [ev.WindowDisabled(window_id=window_id)] if window.enabled else []
