"""What a set-wise run reads before it decides (services/bulk.py): per org its configuration version and
catalog, where the appointments live, external references, the duplicate rule's keys, every window-day
involved, and each create planned once (its request, placement and key)."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Sequence

import asyncpg

from domain import catalog as cat
from domain import decisions
from domain import windowday as wd
from domain.errors import DomainError
from domain.patients import phone_key
from services.booking_batch import booked_key
from services.commands import appointment_patch
from services.unit_of_work import UnitOfWork

Key = tuple[str, str, str, str]  # org, phone, service, local date: the duplicate rule


@dataclass
class Facts:
    """What a run read: per org its config version and catalog, where appointments live, references, keys."""
    catalogs: dict[str, tuple[int, cat.Catalog]] = field(default_factory=dict)
    homes: dict[str, tuple[str, str]] = field(default_factory=dict)  # appointment → (org, stream)
    refs: dict[tuple[str, str], str] = field(default_factory=dict)  # (org, reference) → appointment
    keys: dict[Key, str] = field(default_factory=dict)
    asked: set[Key] = field(default_factory=set)  # keys looked up (absent from `keys`: free)
    days: dict[str, wd.WindowDay] = field(default_factory=dict)
    plans: dict[Any, "Planned"] = field(default_factory=dict)  # command id → its create's request and placement


@dataclass(frozen=True)
class Planned:
    """A create as planned while reading: its request (the payload, dumped once), where it lands, and the
    duplicate rule's key there."""
    request: dict[str, Any]
    placement: wd.Placement
    key: Key | None


def duplicate_key(org: str, catalog: cat.Catalog, phone: str, placement: wd.Placement) -> Key | None:
    if not catalog.settings.prevent_duplicate_bookings:
        return None
    return (org, phone_key(phone, catalog.settings.phone_region), placement.service.service_id,
            placement.local_date.isoformat())


async def read(uow: UnitOfWork, now: datetime, conn: asyncpg.Connection, commands: Sequence[Any]) -> Facts:
    """Everything a run of these commands will ask about, read in a few queries."""
    facts = Facts()
    orgs = sorted({str(c.org_id) for c in commands})
    versions = dict(await conn.fetch("SELECT org_id::text, config_version FROM orgs WHERE org_id = ANY($1::uuid[])",
                                     orgs))
    for org, version in versions.items():
        facts.catalogs[org] = (version, await uow.catalog_at(org, version, conn))
    appointments = [c.appointment_id for c in commands if c.type != "create_appointment"]
    refs = [(str(c.org_id), c.payload.external_reference_id) for c in commands
            if c.type == "create_appointment" and c.payload.external_reference_id]
    # A run of creates without references asks nothing here, and the query is not sent: with nothing to find it
    # still read ~2,200 pages a batch once the calendar was busy (43-55 ms each in the full bench's Kafka phase).
    homes = await conn.fetch(
            "SELECT a.appointment_id, a.org_id::text AS org, a.stream_id, r.external_reference_id AS ref"
            " FROM appointment_streams a LEFT JOIN booking_refs r USING (appointment_id)"
            " WHERE a.appointment_id = ANY($1::text[]) OR (a.org_id, a.appointment_id) IN (SELECT b.org_id,"
            " b.appointment_id FROM booking_refs b JOIN unnest($2::uuid[], $3::text[]) AS k(org, ref)"
            " ON b.org_id = k.org AND b.external_reference_id = k.ref)",
            appointments, [o for o, _ in refs], [r for _, r in refs]) if appointments or refs else []
    for row in homes:
        facts.homes[row["appointment_id"]] = (row["org"], row["stream_id"])
        if row["ref"]:
            facts.refs[(row["org"], row["ref"])] = row["appointment_id"]
    await load_days(uow, conn, facts, {s for _, s in facts.homes.values()})
    # Where creates and reschedules land, and the duplicate keys they will ask about.
    streams: set[str] = set()
    for command in commands:
        for stream, key in _plan(command, facts, now):
            streams.add(stream)
            if key is not None:
                facts.asked.add(key)
    await load_days(uow, conn, facts, streams)
    asked = sorted(facts.asked)
    for row in await conn.fetch(
            f"SELECT k.org::text AS org, k.phone, k.service_id, k.day::text AS day, {booked_key('k.org', 'k.day')}"
            " AS appointment_id FROM unnest($1::uuid[], $2::text[], $3::text[], $4::date[])"
            " AS k(org, phone, service_id, day)",
            [k[0] for k in asked], [k[1] for k in asked], [k[2] for k in asked],
            [dt.date.fromisoformat(k[3]) for k in asked]):
        if row["appointment_id"]:
            facts.keys[(row["org"], row["phone"], row["service_id"], row["day"])] = row["appointment_id"]
    return facts

async def load_days(uow: UnitOfWork, conn: asyncpg.Connection, facts: Facts, streams: set[str]) -> None:
    wanted = {}
    for stream in streams - set(facts.days):
        org = org_of_stream(stream, facts)
        if org is not None:
            wanted[stream] = facts.catalogs[org][1]
    if wanted:
        # Outside the days' locks: cached days as they are (the run catches them up under its locks).
        facts.days.update(await uow.days(conn, wanted, verify=False))

def org_of_stream(stream: str, facts: Facts) -> str | None:
    window_id, _ = wd.split_stream_id(stream)
    return next((org for org, (_, c) in facts.catalogs.items() if window_id in c.windows), None)

def _plan(command: Any, facts: Facts, now: datetime) -> list[tuple[str, Key | None]]:
    """(stream, duplicate key) pairs the command will need, as far as can be told before deciding."""
    org = str(command.org_id)
    if org not in facts.catalogs:
        return []
    catalog = facts.catalogs[org][1]
    try:
        if command.type == "create_appointment":
            request = command.payload.model_dump()
            placement = decisions.plan_create(catalog, request, now)
            key = duplicate_key(org, catalog, request["parent_phone"], placement)
            facts.plans[command.command_id] = Planned(request, placement, key)
            return [(placement.stream_id, key)]
        home = facts.homes.get(command.appointment_id)
        day = facts.days.get(home[1]) if home else None
        record = day.appointments.get(command.appointment_id) if day else None
        if record is None:
            return []
        plan = decisions.plan_update(catalog, record, appointment_patch(command), now)
        if plan.placement is None:
            return []
        return [(plan.placement.stream_id, duplicate_key(org, catalog, record.parent_phone, plan.placement))]
    except DomainError:
        return []
