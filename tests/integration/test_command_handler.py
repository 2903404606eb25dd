"""The command handler against a real PostgreSQL, without HTTP: its two create paths answer alike, a stale
cache in one process is caught and retried, and a Kafka command's effect and result happen once."""
from __future__ import annotations

import datetime as dt
import uuid

import pytest

from domain.errors import DomainError
from domain.timerules import WEEKDAYS
from schemas.http import CreateBranch, CreateService, CreateWindow, SettingsPatch
from schemas.kafka import CommandResult
import services.handler as handler_module
from services import commands
from services.bulk import BulkDecider
from services.command_results import CommandAlreadyApplied, recall, stored
from services.handler import CommandHandler
from services.outcome import Meta
from tests.builders import create_body

DAY = dt.date.today() + dt.timedelta(days=3)


def at(hhmm: str, day: dt.date = DAY) -> str:
    return f"{day.isoformat()}T{hhmm}:00Z"


async def clinic(handler: CommandHandler, max_slots: int = 2) -> str:
    org_id = (await handler.create_org("Clinic", "UTC")).org_id
    meta = Meta(actor="test")
    await commands.create_service(handler, org_id, CreateService(name="General Checkup", duration_minutes=30), meta)
    branch = (await commands.create_branch(handler, org_id, CreateBranch(name="Main"), meta)).data["branch_id"]
    for day in WEEKDAYS:
        for session, start, end in (("Morning", "09:00", "12:00"), ("Evening", "17:00", "20:00")):
            await commands.create_window(handler, org_id, CreateWindow(
                branch_id=branch, day_of_week=day, session=session, start_time=start, end_time=end,
                max_slots=max_slots), meta)
    return org_id


async def answer(handler: CommandHandler, org_id: str, body: dict, careful: bool) -> tuple:
    if careful:
        handler.uow._catalogs.clear()  # without a cached catalog, a create takes the careful path
    try:
        outcome = await handler.create_appointment(org_id, body, Meta())
    except DomainError as exc:
        return (exc.status, exc.code)
    record = outcome.data
    return (outcome.status, record["date"], record["session"], record["status"], record["token"],
            record["parent_phone"], record["version"], outcome.position is not None)


@pytest.mark.parametrize("token_numbering", [False, True])
async def test_batched_and_careful_creates_answer_alike(pool, store, token_numbering):
    answers = {}
    for careful in (False, True):
        handler = CommandHandler(pool, store)
        org_id = await clinic(handler)
        if token_numbering:
            await commands.change_settings(handler, org_id, SettingsPatch(token_numbering=True), Meta())
        await handler.create_appointment(org_id, create_body(at("18:00", DAY + dt.timedelta(days=1)), "+10"), Meta())
        sequence = [
            create_body(at("09:30"), "+11"),  # booked
            create_body(at("10:00"), "+12"),  # booked: the window-day is now full
            create_body(at("10:30"), "+13"),  # SLOT_FULL
            create_body(at("17:30"), "+11"),  # DUPLICATE_BOOKING: same phone, type, date, another window
            create_body(at("11:00"), "+11"),  # DUPLICATE_BOOKING before SLOT_FULL (rule 9 before 10)
            create_body(at("13:00"), "+14"),  # OUTSIDE_AVAILABILITY
            create_body(at("17:45"), "+15"),  # booked in the Evening window
        ]
        answers[careful] = [await answer(handler, org_id, body, careful) for body in sequence]
    assert answers[False] == answers[True]
    codes = [a[1] if isinstance(a[1], str) and a[0] >= 400 else a[0] for a in answers[True]]
    assert codes == [201, 201, "SLOT_FULL", "DUPLICATE_BOOKING", "DUPLICATE_BOOKING", "OUTSIDE_AVAILABILITY", 201]


async def test_a_stale_cache_in_one_process_is_caught_and_the_command_decided_again(pool, store):
    first, second = CommandHandler(pool, store), CommandHandler(pool, store)  # two processes' worth of caches
    org_id = await clinic(first)
    await first.create_appointment(org_id, create_body(at("09:15"), "+21"), Meta())  # first caches the day
    await second.create_appointment(org_id, create_body(at("09:30"), "+22"), Meta())  # the day moves on
    with pytest.raises(DomainError) as full:  # first's cache says 1 of 2; the log says 2 of 2
        await first.create_appointment(org_id, create_body(at("09:45"), "+23"), Meta())
    assert full.value.code == "SLOT_FULL"
    cancelled = await first.create_appointment(org_id, create_body(at("17:15"), "+24"), Meta())
    await second.update_appointment(org_id, cancelled.data["appointment_id"], {"status": "cancelled"}, Meta())
    again = await first.create_appointment(org_id, create_body(at("17:30"), "+24"), Meta())  # duplicate key freed
    assert again.status == 201
    async with pool.acquire() as conn:
        versions = await conn.fetch("SELECT stream_id, version FROM streams WHERE stream_id LIKE 'wd-%'"
                                    " ORDER BY stream_id")
        booked = await conn.fetchval("SELECT count(*) FROM rm_schedule_bookings")
    assert sorted(v["version"] for v in versions) == [2, 3]  # morning: 2 bookings; evening: book, cancel, book
    assert booked == 3


async def test_a_kafka_command_has_one_effect_and_its_result_is_stored_with_its_event(pool, store):
    handler = CommandHandler(pool, store)
    org_id = await clinic(handler)
    command_id = str(uuid.uuid4())
    outcome = await handler.create_appointment(org_id, create_body(at("09:30"), "+31"), Meta(command_id=command_id))
    with pytest.raises(CommandAlreadyApplied):
        await CommandHandler(pool, store).create_appointment(org_id, create_body(at("10:30"), "+32"),
                                                             Meta(command_id=command_id))
    async with pool.acquire() as conn:
        result = await stored(conn, command_id)
        row = await conn.fetchrow("SELECT result, position, data_in_event FROM command_results WHERE command_id = $1",
                                  uuid.UUID(command_id))
        events = await conn.fetch("SELECT global_position, event_type FROM events WHERE metadata->>'command_id' = $1"
                                  " ORDER BY global_position", command_id)
    assert [e["global_position"] for e in events if e["event_type"] == "appointment.booked"] == [outcome.position]
    assert sorted(e["event_type"] for e in events) == ["appointment.booked", "patient.registered"]
    assert result["position"] == result["data"]["position"] == outcome.position
    assert result == CommandResult.ok_body(command_id, 201, outcome.data, outcome.position)  # as it was answered
    # The position is kept beside the result, not written into its JSON (migration 016), and read back into it;
    # the record is not stored again either: it is read back from the booking's event (migration 017).
    assert row["position"] == outcome.position and row["data_in_event"] and "data" not in row["result"]


async def test_a_result_stored_with_its_position_inside_reads_back_as_stored(pool):
    """Results stored before migration 016 hold their position in their JSON and none beside it."""
    command_id = uuid.uuid4()
    old = {"command_id": str(command_id), "ok": True, "status": 201, "position": 42,
           "data": {"appointment_id": "appt_1", "position": 42}}
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO command_results (command_id, result) VALUES ($1, $2)", command_id, old)
        assert await stored(conn, command_id) == old
        assert await recall(conn, [command_id, uuid.uuid4()]) == {command_id: old}


async def test_loading_a_configuration_reads_its_configuration_streams_and_no_patients(pool, store):
    handler = CommandHandler(pool, store)
    org_id = await clinic(handler, max_slots=5)
    for phone in ("+41", "+42", "+43"):
        await handler.create_appointment(org_id, create_body(at("09:30"), phone), Meta())
    async with pool.acquire() as conn:
        patient_streams = [r["stream_id"] for r in await conn.fetch(
            "SELECT stream_id FROM events WHERE org_id = $1 AND stream_id LIKE 'patient-%'", uuid.UUID(org_id))]
        fresh = CommandHandler(pool, store)  # another process: nothing cached
        _, catalog = await fresh.uow.catalog(org_id, conn)
    assert len(patient_streams) == 3
    assert len(catalog.windows) == 14 and fresh.uow.catalog_stream_version(org_id, f"org-{org_id}") >= 1
    assert [fresh.uow.catalog_stream_version(org_id, s) for s in patient_streams] == [0, 0, 0]


async def test_a_process_loads_an_orgs_configuration_as_the_one_that_wrote_it(pool, store):
    from services.store.migrate import migration_files

    writer = CommandHandler(pool, store)
    org_id = await clinic(writer)
    other = await clinic(writer)  # another org's configuration stays out of it
    await commands.change_settings(writer, org_id, SettingsPatch(token_numbering=True), Meta())
    window_id = next(iter((await writer.catalog(org_id)).windows))
    await commands.disable_window(writer, org_id, window_id, Meta())
    written = await writer.catalog(org_id)
    streams = dict(writer.uow._catalogs[org_id][2])
    assert len(streams) == 1 + 1 + 1 + 14  # the org, its service, branch and windows

    async def loaded() -> tuple:
        reader = CommandHandler(pool, store)  # another process: nothing cached
        catalog = await reader.catalog(org_id)
        return catalog, dict(reader.uow._catalogs[org_id][2])

    assert await loaded() == (written, streams)
    assert not set((await writer.catalog(other)).windows) & set(written.windows)
    # An existing log migrated: the list of configuration streams is built from the log alone.
    migration = next(text for _, name, text in migration_files() if name == "014_config_streams.sql")
    backfill = next(s for s in migration.split(";") if "INSERT INTO config_streams" in s)
    async with pool.acquire() as conn:
        await conn.execute("DELETE FROM config_streams")
        await conn.execute(backfill)
    assert await loaded() == (written, streams)


async def test_an_orgs_configuration_is_read_by_its_streams_keys_never_by_walking_the_log(pool, store):
    """Whatever the planner prefers (nested loops turned off here), each configuration stream's events are read
    by the (stream, version) key: never a walk of the log in its order with a filter, as the query by stream
    name was planned once patients' and window-days' events made up the log."""
    from services.unit_of_work import _CONFIGURATION

    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_nestloop = off")
        plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN {_CONFIGURATION}", uuid.uuid4()))
    assert "events_stream_id_stream_version_key" in plan, plan
    assert "events_pkey" not in plan and "Seq Scan on events" not in plan and "Hash" not in plan, plan


@pytest.mark.parametrize("path", ["batched", "careful", "set-wise"])
async def test_a_new_booking_given_an_existing_appointments_id_takes_another(pool, store, monkeypatch, path):
    """Appointment ids are 51 random bits, so two bookings may draw the same one (likely somewhere past tens of
    millions of appointments). The later booking must be refused that id and booked under a new one; it must
    never take over the first appointment's rows."""
    from tests.integration.test_bulk_decisions import Item, envelope  # (that module imports this one)

    handler = CommandHandler(pool, store)
    org_id = await clinic(handler)
    first = await handler.create_appointment(org_id, create_body(at("09:30"), "+51", name="First"), Meta())
    taken = first.data["appointment_id"]
    drawn, fresh = [taken], handler_module.short_id
    monkeypatch.setattr(handler_module, "short_id", lambda prefix: drawn.pop() if drawn else fresh(prefix))
    body = create_body(at("17:30", DAY + dt.timedelta(days=1)), "+52", name="Second")  # another window-day
    if path == "set-wise":
        item = Item(envelope(org_id, 1, "create_appointment", body))
        await BulkDecider(handler).run([item], careful=None,
                                       settle=lambda item, decided: setattr(item, "decided", decided))
        second = item.decided.outcome
    else:
        if path == "careful":
            handler.uow._catalogs.clear()  # without a cached catalog, a create takes the careful path
        second = await handler.create_appointment(org_id, body, Meta())
    assert not drawn and second.status == 201 and second.data["appointment_id"] != taken
    async with pool.acquire() as conn:
        rows = {r["appointment_id"]: (r["name"], r["stream_id"]) for r in await conn.fetch(
            "SELECT a.appointment_id, a.record->>'patient_name' AS name, s.stream_id FROM rm_appointments a"
            " JOIN appointment_streams s USING (appointment_id) WHERE a.org_id = $1", uuid.UUID(org_id))}
        counted = await conn.fetchval("SELECT count(*) FROM rm_schedule_bookings WHERE org_id = $1", uuid.UUID(org_id))
    assert rows[taken][0] == "First" and rows[second.data["appointment_id"]][0] == "Second"
    assert rows[taken][1] != rows[second.data["appointment_id"]][1] and counted == 2


@pytest.mark.parametrize("kind", ["hold", "wl"])
async def test_a_new_hold_or_waitlist_entry_given_a_taken_id_takes_another(pool, store, monkeypatch, kind):
    """The same for holds and waitlist entries (51 random bits too): the later one gets an id of its own, and the
    earlier one's row stays as it was."""
    import domain.holds

    handler = CommandHandler(pool, store)
    org_id = await clinic(handler, max_slots=1)
    for hhmm, phone in (("09:30", "+61"), ("17:30", "+62")):  # DAY full: waitlist entries wait
        await handler.create_appointment(org_id, create_body(at(hhmm), phone), Meta())

    async def new(name: str) -> str:
        if kind == "hold":  # on a day of its own
            body = create_body(at("17:30", DAY + dt.timedelta(days=len(name))), "+63", name=name)
            return (await handler.place_hold(org_id, body, 5, Meta())).data["hold_id"]
        body = {"appointment_type": "General Checkup", "date": DAY, "patient_name": name,
                "parent_phone": f"+6{len(name)}"}
        return (await handler.join_waitlist(org_id, body, Meta())).data["waitlist_id"]

    taken = await new("First")
    drawn, fresh = [taken], domain.holds.short_id
    monkeypatch.setattr(domain.holds, "short_id", lambda prefix: drawn.pop() if drawn and prefix == kind
                        else fresh(prefix))
    second = await new("Second one")
    assert not drawn and second != taken
    table, key = ("rm_holds", "hold_id") if kind == "hold" else ("rm_waitlist", "waitlist_id")
    async with pool.acquire() as conn:
        names = dict(await conn.fetch(f"SELECT {key}, record->>'patient_name' FROM {table} WHERE org_id = $1",
                                      uuid.UUID(org_id)))
    assert names == {taken: "First", second: "Second one"}
