"""A gateway process killed mid-write (SIGKILL) never loses a booking it acknowledged and leaves nothing
half-written; one stopped with SIGTERM answers the requests it holds before it exits."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from services.local.ports import free_port
from tests.builders import create_body
from tests.e2e.conftest import Api, local_at, new_org, setup_clinic, wait_healthy
from tests.e2e.kafka import command, encoded, publish, read_topic, results_by_command
from tests.faults.invariants import violations

ROOT = Path(__file__).resolve().parents[2]


def _gateway(pg_url: str, schema: str, port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLOTLEDGER_")}
    env.update(SLOTLEDGER_DATABASE_URL=pg_url, SLOTLEDGER_DATABASE_SCHEMA=schema, SLOTLEDGER_HTTP_PORT=str(port),
               SLOTLEDGER_LOG_LEVEL="warning", SLOTLEDGER_AUTH_FAILURES_PER_MINUTE="1000000")
    return subprocess.Popen([sys.executable, "-m", "services.cli", "serve", "--only", "gateway"], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def _load(api: Api, seconds: float, outcomes: Counter, acknowledged: list[str], tag: int) -> None:
    started, n = time.monotonic(), 0
    while time.monotonic() - started < seconds:
        n += 1
        try:
            status, b = await api.post("/v1/appointments", create_body(
                local_at(api, 2 + n % 25, ("09:30", "17:30")[n % 2]), f"+1888{tag:03d}{n:05d}"))
        except aiohttp.ClientConnectorError:
            outcomes["refused"] += 1  # nobody listens any more
            await asyncio.sleep(0.02)
            continue
        except (aiohttp.ClientError, asyncio.TimeoutError):
            outcomes["cut off"] += 1  # the process went away mid-request: the client cannot know
            continue
        outcomes[status] += 1
        if status == 201:
            acknowledged.append(b["appointment_id"])


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
async def test_a_gateway_process_stopped_mid_write_loses_no_acknowledged_booking(kafka_runtime, http, how,
                                                                                 kafka_bootstrap):
    runtime = kafka_runtime  # its ingestor and relay keep taking Kafka commands and publishing events meanwhile
    setup = await setup_clinic(await new_org(runtime, http), max_slots=200)
    commands = [command(setup.org_id, "create_appointment", create_body(
        local_at(setup, 2 + i % 25, "10:30"), f"+1777{i:06d}")) for i in range(200)]
    port = free_port()
    proc = _gateway(runtime.settings.database_url, runtime.settings.database_schema, port)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
            url = f"http://127.0.0.1:{port}"
            await wait_healthy(session, url, proc)
            api = Api(session, url, setup.key, setup.org_id, setup.tz, setup.ids)
            outcomes: Counter = Counter()
            acknowledged: list[str] = []
            load = [asyncio.create_task(_load(api, 4, outcomes, acknowledged, c)) for c in range(8)]
            await publish(kafka_bootstrap, runtime.settings.topic("commands"),
                          [encoded(c, f"day-{i % 25}") for i, c in enumerate(commands[:100])])
            await asyncio.sleep(1.5)
            proc.send_signal(signal.SIGKILL if how == "SIGKILL" else signal.SIGTERM)
            await publish(kafka_bootstrap, runtime.settings.topic("commands"),
                          [encoded(c, f"day-{i % 25}") for i, c in enumerate(commands[100:])])
            await asyncio.gather(*load)
            proc.wait(30)
            wanted = {c["command_id"] for c in commands}
            records = await read_topic(kafka_bootstrap, runtime.settings.topic("command-results"),
                                       lambda recs: wanted <= set(results_by_command(recs)), 90)
            results = results_by_command(records)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert wanted <= set(results) and all(all(r == rs[0] for r in rs) for rs in results.values())
    assert {results[c][0]["status"] for c in wanted} == {201}  # every Kafka create booked, once
    print(f"\ngateway {how} mid-load: outcomes {dict(outcomes)}, {len(acknowledged)} acknowledged; "
          f"{len(wanted)} Kafka commands answered once")
    assert 500 not in outcomes and acknowledged
    if how == "SIGTERM":
        assert proc.returncode == 0
    async with runtime.pool.acquire() as conn:
        logged = {r["id"] for r in await conn.fetch(
            "SELECT data->'appointment'->>'appointment_id' AS id FROM events WHERE event_type = 'appointment.booked'")}
        projected = {r["appointment_id"] for r in await conn.fetch("SELECT appointment_id FROM rm_appointments")}
        counted = await conn.fetchval("SELECT count(*) FROM rm_schedule_bookings")
        keys = await conn.fetchval("SELECT count(*) FROM booking_keys")
        streams = await conn.fetchval("SELECT count(*) FROM appointment_streams")
        broken = await violations(conn, 200)
    assert not any(broken.values()), broken
    assert set(acknowledged) <= logged  # every 201 it sent is in the log…
    kafka_booked = {results[c][0]["data"]["appointment_id"] for c in wanted}
    if how == "SIGTERM":  # …and it drained: every booking it made was answered (requests cut off on idle
        assert logged - kafka_booked == set(acknowledged)  # keep-alive connections as it stopped were never taken)
    # …and nothing half-written: each booking in the log has all its rows, and no row lacks its booking
    assert logged == projected and counted == keys == streams == len(logged)
    logged_ids = {str(r["event_id"]) for r in await _all_events(runtime)}
    events = await read_topic(kafka_bootstrap, runtime.settings.topic("events"),
                              lambda recs: logged_ids <= {json.loads(r.value)["id"] for r in recs}, 90)
    assert logged_ids <= {json.loads(r.value)["id"] for r in events}  # 0 missing from the events topic


async def _all_events(runtime):
    async with runtime.pool.acquire() as conn:
        return await conn.fetch("SELECT event_id FROM events")
