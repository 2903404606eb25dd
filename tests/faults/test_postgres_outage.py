"""PostgreSQL crashes (SIGKILL) and comes back while clients book, read and cancel over HTTP: the gateway answers
503 while it is gone and never 500, recovers by itself, and every booking it acknowledged is in the log and the
read models, with capacity held. Figures are printed for FAULTS.md."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter

import aiohttp
import pytest

from services.local.postgres import LocalPostgres
from services.runtime import READINESS_SECONDS, Runtime
from services.settings import Settings
from services.store.pool import DATABASE_UNAVAILABLE, UNANSWERED_AFTER, create_pool
from tests.builders import create_body
from tests.e2e.conftest import local_at, new_org, setup_clinic
from tests.e2e.kafka import command, encoded, publish, read_topic, results_by_command
from tests.faults.invariants import violations

CAPACITY = 60
LOAD_SECONDS = 14
KILL_AT, DOWN_FOR = 3.0, 3.0
STATEMENT_TIMEOUT = 3
AFTER_BACK = 6.0  # the load goes on at least this long once PostgreSQL is back, however long the fault took


@pytest.fixture
async def own_postgres(work_dir):
    server = LocalPostgres(work_dir / f"pg-outage-{os.getpid()}", durable=True).start()
    yield server
    server.remove()


async def test_a_stalled_servers_connection_is_dropped_at_the_statement_timeout_not_waited_on(own_postgres):
    """asyncpg's own way would send a CancelRequest to the stalled server and make the rollback wait for it: a
    second full timeout before the caller hears anything."""
    pool = await create_pool(own_postgres.url, min_size=1, max_size=1, connect_timeout=2, statement_timeout=2,
                             acquire_timeout=2)
    try:
        assert await pool.fetchval("SELECT 1") == 1
        own_postgres.signal_all(signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(DATABASE_UNAVAILABLE):
                async with pool.acquire() as conn, conn.transaction():
                    await conn.execute("SELECT 1")
            took = time.monotonic() - started
        finally:
            own_postgres.signal_all(signal.SIGCONT)
        assert 2 <= took < 2 + UNANSWERED_AFTER + 0.75, took  # asyncpg's way: 2 s more
        assert await pool.fetchval("SELECT 1") == 1  # a new connection, once the server is back
    finally:
        await pool.close()


@pytest.mark.parametrize("fault", ["SIGKILL and restart", "SIGSTOP and SIGCONT"])
async def test_postgres_gone_and_back_under_load(own_postgres, tmp_path, fault, kafka_bootstrap, topic_prefix):
    """SIGKILL: a crash, then a restart. SIGSTOP of the whole server (every backend): a stall longer than the
    statement timeout, then it resumes."""
    pg = own_postgres
    down_for = DOWN_FOR if fault.startswith("SIGKILL") else 2 * DOWN_FOR  # a stall past the 3 s statement timeout
    settings = Settings(database_url=pg.url, http_port=0, kafka_bootstrap=kafka_bootstrap, topic_prefix=topic_prefix,
                        auth_failures_per_minute=10**6,
                        poll_interval_seconds=0.2, connect_timeout_seconds=2,
                        statement_timeout_seconds=STATEMENT_TIMEOUT,
                        acquire_timeout_seconds=2,
                        state_dir=tmp_path)
    rt = Runtime(settings, components=("gateway", "ingestor", "relay"))
    await rt.start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
            api = await setup_clinic(await new_org(rt, session), max_slots=CAPACITY)
            outcomes: Counter = Counter()
            acknowledged: list[str] = []
            expected: dict[str, tuple[str, str]] = {}  # what every acknowledged write left each appointment as
            first_ok_after: list[float] = []
            started = time.monotonic()
            back_at: list[float] = []
            fault_at: list[float] = []
            told_at: dict[int, float] = {}  # each client's first 503

            def answered(c: int, status: int) -> None:
                if status == 503:
                    told_at.setdefault(c, time.monotonic())

            def loading() -> bool:
                now = time.monotonic()
                return now - started < LOAD_SECONDS or not back_at or now - back_at[0] < AFTER_BACK

            async def client(c: int) -> None:
                n = 0
                while loading():
                    n += 1
                    try:
                        await one_round(c, n)
                    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:  # the client's side: not an answer
                        outcomes[f"client error {type(exc).__name__}"] += 1

            async def one_round(c: int, n: int) -> None:
                body = create_body(local_at(api, 2 + n % 27, ("09:30", "17:30")[c % 2]), f"+1777{c:03d}{n:05d}")
                status, b = await api.post("/v1/appointments", body)
                code = b["error"]["code"] if status >= 400 else status
                outcomes[(status, code)] += 1
                answered(c, status)
                if status == 201:
                    appointment_id = b["appointment_id"]
                    acknowledged.append(appointment_id)
                    expected[appointment_id] = ("confirmed", b["data"]["date"])
                    if back_at and not first_ok_after:
                        first_ok_after.append(time.monotonic() - back_at[0])
                    status, got = await api.get(f"/v1/appointments/{appointment_id}")
                    outcomes[("read after write", status)] += 1
                    answered(c, status)
                    if n % 3 == 0:  # mixed load: reschedules and cancels too
                        change = {"appointment_date": local_at(api, 2 + (n + 7) % 27, ("09:45", "17:45")[c % 2])} \
                            if n % 2 else {"status": "cancelled"}
                        expected.pop(appointment_id)  # unknown until answered
                        status, moved = await api.patch(f"/v1/appointments/{appointment_id}", change)
                        outcomes[("update", status if status < 400 else moved["error"]["code"])] += 1
                        answered(c, status)
                        if status == 200:
                            expected[appointment_id] = (moved["data"]["status"], moved["data"]["date"])
                        elif status != 503:  # refused: as it was
                            expected[appointment_id] = ("confirmed", b["data"]["date"])
                await asyncio.sleep(0.01 if status != 503 else 0.05)

            ready_after = None
            readiness_while_down: list = []
            readiness_took: list[float] = []

            async def inject() -> None:
                nonlocal ready_after
                await asyncio.sleep(KILL_AT)
                fault_at.append(time.monotonic())
                if fault.startswith("SIGKILL"):
                    pg.kill()
                else:
                    pg.signal_all(signal.SIGSTOP)  # the server and all its backends
                await asyncio.sleep(down_for)
                asked = time.monotonic()
                async with session.get(rt.http_url + "/readyz") as resp:  # says which dependency is down
                    readiness_while_down.append((resp.status, await resp.json()))
                readiness_took.append(time.monotonic() - asked)
                if fault.startswith("SIGKILL"):
                    await asyncio.to_thread(pg.start)
                else:
                    pg.signal_all(signal.SIGCONT)
                back_at.append(time.monotonic())
                for _ in range(200):
                    async with session.get(rt.http_url + "/readyz") as resp:
                        if resp.status == 200:
                            ready_after = time.monotonic() - back_at[0]
                            return
                    await asyncio.sleep(0.05)

            sent: list[str] = []
            changed_over_kafka: set[str] = set()  # their last word may be a Kafka command's (checked as results)

            async def over_kafka() -> None:  # creates, and changes of bookings made over HTTP, through the fault
                for wave in range(LOAD_SECONDS * 2):
                    batch = [command(api.org_id, "create_appointment", create_body(
                        local_at(api, 2 + (wave + i) % 27, "10:30"), f"+1666{wave:03d}{i:03d}")) for i in range(10)]
                    for k, appointment_id in enumerate(acknowledged[-6:]):  # notes, reschedules, cancels
                        change = ({"notes": f"wave {wave}"},
                                  {"appointment_date": local_at(api, 2 + (wave + k) % 27, "11:00")},
                                  {"status": "cancelled"})[k % 3]
                        batch.append(command(api.org_id, "update_appointment", change, appointment_id=appointment_id))
                        changed_over_kafka.add(appointment_id)
                    try:
                        await publish(kafka_bootstrap, settings.topic("commands"),
                                      [encoded(c, c.get("appointment_id") or "new") for c in batch])
                    except Exception:  # the producer's own trouble, not the service's: try the next wave
                        continue
                    sent.extend(c["command_id"] for c in batch)
                    await asyncio.sleep(0.5)

            await asyncio.gather(inject(), over_kafka(), *(client(c) for c in range(8)))
            told_after = sorted(round(t - fault_at[0], 2) for t in told_at.values())
            print(f"\npostgres {fault} ({down_for}s) under 8 clients: outcomes {dict(outcomes)}; "
                  f"first 503s {told_after}s after the fault; "
                  f"first 201 {first_ok_after}s after restart; /readyz postgres ok after {ready_after}s")

            [(status, down)] = readiness_while_down
            assert status == 503 and down["checks"]["postgres"]["ok"] is False, down
            assert readiness_took[0] < READINESS_SECONDS + 2, readiness_took  # an answer, in bounded time
            assert not any(status == 500 for status, *_ in (k for k in outcomes if isinstance(k, tuple))), outcomes
            # It was down, and every client was told (a create, a read or a change answered 503), within the
            # statement timeout: a stalled server's connections are dropped, not waited on for a cancellation.
            assert len(told_at) == 8, (told_after, outcomes)
            assert told_after[-1] < STATEMENT_TIMEOUT + UNANSWERED_AFTER + 1, (told_after, outcomes)
            assert first_ok_after and first_ok_after[0] < 10, (first_ok_after, outcomes)
            assert ready_after is not None and ready_after < 10
            records = await read_topic(kafka_bootstrap, settings.topic("command-results"),
                                       lambda recs: set(sent) <= set(results_by_command(recs)), 90)
            results = results_by_command(records)
            assert set(sent) <= set(results), f"{len(set(sent) - set(results))} commands got no result"
            assert all(all(r == rs[0] for r in rs) for rs in results.values())  # one result per command
            kafka = Counter(rs[0]["status"] if rs[0]["ok"] else rs[0]["error"]["code"] for rs in results.values())
            print(f"Kafka through the fault: {len(sent)} commands, {dict(kafka)}")
            assert "INTERNAL_ERROR" not in kafka and kafka[201] > 0
            reads = {k[1]: n for k, n in outcomes.items() if k[0] == "read after write"}
            assert set(reads) <= {200, 503} and sum(reads.values()) == len(acknowledged), reads  # never a 404

            async with rt.pool.acquire() as conn:  # every acknowledged booking is in the log and the read models
                logged = {r["id"] for r in await conn.fetch(
                    "SELECT data->'appointment'->>'appointment_id' AS id FROM events"
                    " WHERE event_type = 'appointment.booked'")}
                rows = await conn.fetch("SELECT appointment_id, status, date FROM rm_appointments")
                projected = {r["appointment_id"] for r in rows}
                now_as = {r["appointment_id"]: (r["status"], r["date"].isoformat()) for r in rows}
                per_day = await conn.fetch("SELECT window_id, date, count(*) AS n FROM rm_schedule_bookings"
                                           " GROUP BY window_id, date")
                broken = await violations(conn, CAPACITY)
            assert set(acknowledged) <= logged and set(acknowledged) <= projected
            assert not any(broken.values()), broken
            async with rt.pool.acquire() as conn:
                logged_ids = {str(r["event_id"]) for r in await conn.fetch("SELECT event_id FROM events")}
            events = await read_topic(kafka_bootstrap, settings.topic("events"),
                                      lambda recs: logged_ids <= {json.loads(r.value)["id"] for r in recs}, 90)
            missing = logged_ids - {json.loads(r.value)["id"] for r in events}
            print(f"events: {len(logged_ids)} in the log, {len(missing)} missing from the events topic")
            assert not missing
            over_http = {a: v for a, v in expected.items() if a not in changed_over_kafka}
            assert {a: now_as[a] for a in over_http} == over_http  # every acknowledged change, as answered
            assert not any(k[0] == "update" and k[1] == "INTERNAL_ERROR" for k in outcomes if isinstance(k, tuple))
            assert all(row["n"] <= CAPACITY for row in per_day), [dict(r) for r in per_day]
    finally:
        await rt.stop()
