"""Kafka appointment commands decided set-wise: a fetched batch by window-day, not one command at a time.

For a run of appointment commands (creates, updates, cancels, completes) the facts every decision needs are
read for all of them at once: the orgs' configuration versions, where each appointment lives, external
references, the duplicate rule's keys, and every window-day involved (each loaded once, under its lock). Then
the domain decides each command in batch order, against window-days that already hold the commands before
it, exactly as the careful path would (the same functions, the same rule order). Everything decided commits
in one statement per org: all window-days' events, their read-model and write-side rows, and the results.

A command that needs what was not read (a doctor to check, a reschedule whose target moved, a key not looked
up) stops the run: what was decided before it commits, and a new run starts at it (alone, it takes the
careful path). A lost race (another process wrote a window-day meanwhile) evicts and decides the run again;
twice lost, each command takes the careful path. Either way each command is decided once, in order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Sequence

import asyncpg

from domain import catalog as cat
from domain import decisions
from domain import doctors
from domain import events as ev
from domain import windowday as wd
from domain.appointment import Appointment
from domain.errors import DomainError, not_found
from projections import write_side
from services.command_results import CommandAlreadyApplied, pending
from services.bulk_facts import Facts, Key, duplicate_key, org_of_stream, read
from services.commands import appointment_patch
from services.handler import CommandHandler, new_appointment_id
from services.logs import log
from services.outcome import Meta, Outcome, written
from services.store.pool import DATABASE_UNAVAILABLE
from services.unit_of_work import Change, Conflict, Work

TYPES = frozenset({"create_appointment", "update_appointment", "cancel_appointment", "complete_appointment"})
_ATTEMPTS = 2


class _Stop(Exception):
    """This command needs facts the run did not read."""


@dataclass
class Decided:
    """One command's answer: an outcome, or the refusal."""
    command: Any
    outcome: Outcome | None = None
    refusal: DomainError | None = None
    stream_version: tuple[str, int] | None = None  # the event its result rides on


def takes(command: Any) -> bool:
    """Whether a command can be decided set-wise (else it takes the careful path, in its turn)."""
    if command.type not in TYPES:
        return False
    payload = command.payload
    return not getattr(payload, "assigned_doctor", None)  # a doctor's conflicts are read one by one


@dataclass
class BulkDecider:
    handler: CommandHandler

    async def run(self, items: Sequence[Any], careful: Callable[[Any], Awaitable[None]],
                  settle: Callable[[Any, Decided], None]) -> None:
        """Answer every item (anything with a `.command`), in order: `settle` takes a set-wise decision,
        `careful` answers one item the careful way."""
        i = 0
        while i < len(items):
            if not takes(items[i].command):
                await careful(items[i])
                i += 1
                continue
            j = i
            while j < len(items) and takes(items[j].command):
                j += 1
            try:
                decided = await self._run([item.command for item in items[i:j]])
            except DATABASE_UNAVAILABLE:
                raise
            except Exception:  # a bug here must not stop the stream: the careful path sets the culprit aside
                log.exception("set-wise decision failed; deciding these commands one by one")
                decided = None
            if decided is None:  # lost the race twice, or failed: one by one
                for item in items[i:j]:
                    await careful(item)
                i = j
            elif not decided:  # the first command stopped the run: it goes alone
                await careful(items[i])
                i += 1
            else:
                for item, answer in zip(items[i:], decided):
                    settle(item, answer)
                i += len(decided)

    async def _run(self, commands: Sequence[Any]) -> list[Decided] | None:
        uow = self.handler.uow
        for _ in range(_ATTEMPTS):
            async with self.handler.pool.acquire() as conn:
                facts = await read(uow, self.handler.clock(), conn, commands)
                async with uow.locks(sorted(facts.days)):
                    try:
                        return await self._decide_and_commit(conn, commands, facts)
                    except Conflict:
                        continue
                    except CommandAlreadyApplied:  # another consumer took some of these: one by one
                        return None
        return None

    # -- deciding --------------------------------------------------------------------------------------
    async def _decide_and_commit(self, conn: asyncpg.Connection, commands: Sequence[Any],
                                 facts: Facts) -> list[Decided]:
        # Under the locks, every day as the log has it now (a version check; reloads only what moved).
        facts.days = await self.handler.uow.days(conn, {s: facts.catalogs[org_of_stream(s, facts)][1]
                                                        for s in facts.days})
        run = _Run(facts, self.handler.clock())
        decided: list[Decided] = []
        try:
            for command in commands:
                try:
                    decided.append(run.decide(command))
                except _Stop:
                    break
            if decided:
                await run.commit(conn, self.handler, decided)
        except BaseException:
            self.handler.uow.evict(*run.changed)
            raise
        return decided

@dataclass
class _Run:
    """The decisions of one run, folded as they are made into its window-days."""
    facts: Facts
    now: Any
    changes: dict[tuple[str, str], Change] = field(default_factory=dict)  # (org, stream) → its events
    order: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # per org: its events as decided (Work.order)
    touched: dict[str, list[tuple[Appointment | None, Appointment]]] = field(default_factory=dict)  # per org
    results: dict[str, list[tuple[str, Any]]] = field(default_factory=dict)  # per org

    @property
    def changed(self) -> list[str]:
        return [stream for _, stream in self.changes]

    def decide(self, command: Any) -> Decided:
        org = str(command.org_id)
        meta = Meta(command_id=str(command.command_id), actor="kafka")
        try:
            if org not in self.facts.catalogs:
                raise not_found("organization", org)
            if command.type == "create_appointment":
                return self._create(command, org, meta)
            return self._update(command, org, meta)
        except DomainError as exc:
            return Decided(command, refusal=exc.kept())

    def _create(self, command: Any, org: str, meta: Meta) -> Decided:
        catalog = self.facts.catalogs[org][1]
        planned = self.facts.plans.get(command.command_id)  # planned on this run's configuration
        request = planned.request if planned else command.payload.model_dump()
        ref = request.get("external_reference_id")
        if ref:
            existing = self.facts.refs.get((org, ref))
            if existing is not None:
                record = self._record(existing)
                return Decided(command, written(200, record.as_dict(), None, idempotent=True))
        if planned is None:
            placement = decisions.plan_create(catalog, request, self.now)
            key = duplicate_key(org, catalog, request["parent_phone"], placement)
        else:
            placement, key = planned.placement, planned.key
        day = self._day(placement.stream_id)
        duplicate = self._duplicate(key, None)
        appointment_id = new_appointment_id()
        events = decisions.decide_create(catalog, day, placement, request, appointment_id, self.now, duplicate)
        self._fold(org, day, events, meta)
        record = day.appointments[appointment_id]
        self.facts.homes[appointment_id] = (org, day.stream_id)
        self._touch(org, catalog, None, record)
        return self._answer(command, org, meta, written(201, events[0].appointment, None), day, events[-1])

    def _update(self, command: Any, org: str, meta: Meta) -> Decided:
        catalog = self.facts.catalogs[org][1]
        appointment_id = command.appointment_id
        home = self.facts.homes.get(appointment_id)
        if home is None or home[0] != org:
            raise not_found("appointment", appointment_id)
        source = self._day(home[1])
        before = source.appointments.get(appointment_id)
        if before is None:
            raise _Stop  # moved since it was read
        if source.waiting:
            raise _Stop  # a place it frees goes to the waitlist in its own commit, one by one
        patch = appointment_patch(command)
        plan = decisions.plan_update(catalog, before, patch, self.now)
        if plan.unchanged:
            return Decided(command, written(200, before.as_dict(), None))
        target = duplicate = None
        if plan.placement is not None:
            target = self._day(plan.placement.stream_id)
            duplicate = self._duplicate(duplicate_key(org, catalog, before.parent_phone, plan.placement), appointment_id)
        by_stream = decisions.decide_update(catalog, source, appointment_id, patch, self.now, target,
                                            plan.placement, duplicate)
        if not by_stream:
            return Decided(command, written(200, before.as_dict(), None))
        home_day = target or source
        home_events = by_stream.get(home_day.stream_id, [])
        after = doctors.record_after(before, home_events)
        doctor_after = doctors.doctor_time(after, catalog)
        if doctor_after is not None and doctor_after != doctors.doctor_time(before, catalog):
            raise _Stop  # a doctor's new time is checked one by one
        for stream, events in by_stream.items():
            self._fold(org, self._day(stream), events, meta)
        self.facts.homes[appointment_id] = (org, home_day.stream_id)
        self._touch(org, catalog, before, after)
        return self._answer(command, org, meta, written(200, after.as_dict(), None), home_day,
                            home_events[-1] if home_events else None)

    # -- the run's state -------------------------------------------------------------------------------
    def _day(self, stream: str) -> wd.WindowDay:
        day = self.facts.days.get(stream)
        if day is None:
            raise _Stop
        return day

    def _record(self, appointment_id: str) -> Appointment:
        _, stream = self.facts.homes[appointment_id]
        record = self._day(stream).appointments.get(appointment_id)
        if record is None:
            raise _Stop
        return record

    def _duplicate(self, key: Key | None, excluding: str | None) -> str | None:
        if key is None:
            return None
        if key not in self.facts.asked:
            raise _Stop
        found = self.facts.keys.get(key)
        return None if found == excluding else found

    def _fold(self, org: str, day: wd.WindowDay, events: list[ev.Event], meta: Meta) -> None:
        change = self.changes.get((org, day.stream_id))
        if change is None:
            change = self.changes[(org, day.stream_id)] = Change(day.stream_id, day.version, [], [])
        for event in events:
            day.apply(event)
        self.order.setdefault(org, []).extend((day.stream_id, len(change.events) + n) for n in range(len(events)))
        change.events += events
        change.metas += [meta] * len(events)

    def _touch(self, org: str, catalog: cat.Catalog, before: Appointment | None, after: Appointment) -> None:
        """The write-side facts the next decisions see: references and duplicate keys, as the commit will."""
        self.touched.setdefault(org, []).append((before, after))
        old = write_side.rows(before, org, catalog) if before is not None else {}
        new = write_side.rows(after, org, catalog)
        for table, facts in (("booking_keys", self.facts.keys), ("booking_refs", self.facts.refs)):
            if old.get(table) is not None:
                facts.pop(_fact_key(table, old[table]), None)
            if new.get(table) is not None:
                facts[_fact_key(table, new[table])] = after.appointment_id
        if new.get("booking_keys") is not None:
            self.facts.asked.add(_fact_key("booking_keys", new["booking_keys"]))

    def _answer(self, command: Any, org: str, meta: Meta, outcome: Outcome, day: wd.WindowDay,
                riding: ev.Event | None) -> Decided:
        """`riding`: the command's last event on `day`, which its result rides on."""
        result = pending(meta, outcome, day.version, riding)
        if result is not None:
            self.results.setdefault(org, []).append((day.stream_id, result))
        return Decided(command, outcome, stream_version=(day.stream_id, day.version))

    # -- committing ------------------------------------------------------------------------------------
    async def commit(self, conn: asyncpg.Connection, handler: CommandHandler, decided: list[Decided]) -> None:
        works = []
        for org in sorted({org for org, _ in self.changes}):
            version, catalog = self.facts.catalogs[org]
            works.append(Work(org, catalog, version, [c for (o, _), c in self.changes.items() if o == org],
                              self.touched.get(org, ()), self.results.get(org, ()), order=self.order.get(org, ())))
        if not works:
            return
        if len(works) == 1:
            stored = await handler.uow.commit(conn, works[0])
        else:
            async with conn.transaction():
                stored = [e for work in works for e in await handler.uow.commit(conn, work)]
        positions = {(e.stream_id, e.stream_version): e.position for e in stored}
        for answer in decided:
            if answer.stream_version is not None:
                answer.outcome.position = answer.outcome.data["position"] = positions[answer.stream_version]


def _fact_key(table: str, row: tuple) -> Any:
    """booking_keys rows are (appointment, org, phone, service, date); booking_refs (appointment, org, ref)."""
    if table == "booking_keys":
        return (str(row[1]), row[2], row[3], row[4].isoformat())
    return (str(row[1]), row[2])


