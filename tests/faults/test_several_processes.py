"""Several service processes on one database and one broker, deciding the same hot window-day and the same
doctor from HTTP and Kafka at once; a third ingestor joins the consumer group mid-stream (a rebalance) and one
leaves (SIGTERM). Capacity, the doctor's schedule and one answer per command hold."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp

from services.local.ports import free_port
from tests.builders import create_body
from tests.e2e.conftest import Api, local_at, new_org, setup_clinic, wait_healthy
from tests.e2e.kafka import command, encoded, publish, read_topic, results_by_command
from tests.faults.invariants import violations

ROOT = Path(__file__).resolve().parents[2]
CAPACITY = 30


def _serve(components: str, pg_url: str, schema: str, bootstrap: str, prefix: str, port: int, log: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLOTLEDGER_")}
    env.update(SLOTLEDGER_DATABASE_URL=pg_url, SLOTLEDGER_DATABASE_SCHEMA=schema, SLOTLEDGER_KAFKA_BOOTSTRAP=bootstrap,
               SLOTLEDGER_TOPIC_PREFIX=prefix, SLOTLEDGER_HTTP_PORT=str(port), SLOTLEDGER_LOG_LEVEL="warning",
               SLOTLEDGER_AUTH_FAILURES_PER_MINUTE="1000000")
    return subprocess.Popen([sys.executable, "-m", "services.cli", "serve", "--only", components], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=open(log, "w"))


async def test_two_services_and_a_rebalance_share_one_hot_window_day_and_one_doctor(
        runtime, http, pg_url, schema, kafka_bootstrap, topic_prefix, tmp_path):
    setup = await setup_clinic(await new_org(runtime, http), max_slots=CAPACITY)
    status, doctor = await setup.post("/v1/doctors", {"name": "Dr. Busy"})
    ports = [free_port(), free_port()]
    procs = [_serve("gateway,ingestor", pg_url, schema, kafka_bootstrap, topic_prefix, p, tmp_path / f"s{n}.log")
             for n, p in enumerate(ports)]
    third = None
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            for port in ports:
                await wait_healthy(session, f"http://127.0.0.1:{port}", procs[ports.index(port)])
            apis = [Api(session, f"http://127.0.0.1:{p}", setup.key, setup.org_id, setup.tz, setup.ids) for p in ports]
            hot = [create_body(local_at(setup, 4, f"{9 + n % 3:02d}:{n % 4 * 15:02d}"), f"+1666{n:06d}",
                               **({"assigned_doctor": "dr. busy", "duration_minutes": 15} if n % 5 == 0 else {}))
                   for n in range(300)]
            commands = [command(setup.org_id, "create_appointment", body) for body in hot[:150]]
            http_bodies = hot[150:]

            async def publish_in_waves() -> None:
                nonlocal third
                for wave in range(3):
                    await publish(kafka_bootstrap, f"{topic_prefix}.commands",
                                  [encoded(c, f"key-{i % 7}") for i, c in enumerate(commands[wave * 50:wave * 50 + 50])])
                    if wave == 0:  # a third ingestor joins: the group rebalances mid-stream
                        third = _serve("ingestor", pg_url, schema, kafka_bootstrap, topic_prefix, free_port(),
                                       tmp_path / "third.log")
                    if wave == 1:  # and one of the first two leaves
                        procs[1].send_signal(signal.SIGTERM)
                    await asyncio.sleep(2)

            async def over_http(n: int, body: dict) -> tuple[int, dict]:
                await asyncio.sleep(n * 0.02)  # spread over the waves, so HTTP and Kafka compete for the places
                try:
                    return await apis[n % 2 if procs[1].poll() is None else 0].post("/v1/appointments", body)
                except aiohttp.ClientError:  # the second process was stopping
                    return await apis[0].post("/v1/appointments", body)

            started = time.monotonic()
            answers, _ = await asyncio.gather(
                asyncio.gather(*(over_http(n, b) for n, b in enumerate(http_bodies))), publish_in_waves())
            wanted = {c["command_id"] for c in commands}
            records = await read_topic(kafka_bootstrap, f"{topic_prefix}.command-results",
                                       lambda recs: wanted <= set(results_by_command(recs)), 120)
            results = results_by_command(records)
            elapsed = time.monotonic() - started
    finally:
        for proc in [*procs, third]:
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for proc in [*procs, third]:
            if proc is not None:
                proc.wait(60)

    http_codes = Counter(s if s < 400 else b["error"]["code"] for s, b in answers)
    kafka_codes = Counter(results[c][0]["error"]["code"] if not results[c][0]["ok"] else results[c][0]["status"]
                          for c in wanted)
    print(f"\ntwo services + a rebalance, {elapsed:.1f}s: HTTP {dict(http_codes)}; Kafka {dict(kafka_codes)}")
    assert wanted <= set(results) and all(all(r == rs[0] for r in rs) for rs in results.values())
    assert "INTERNAL_ERROR" not in http_codes and "INTERNAL_ERROR" not in kafka_codes
    # The log first: were it overbooked, the answers below would only say that something was.
    async with runtime.pool.acquire() as conn:
        active = await conn.fetchval("SELECT count(*) FROM rm_schedule_bookings")
        overlaps = await conn.fetchval(
            "SELECT count(*) FROM doctor_bookings a JOIN doctor_bookings b ON a.doctor = b.doctor"
            " AND a.appointment_id < b.appointment_id AND a.starts_at < b.ends_at AND b.starts_at < a.ends_at")
        logged = await conn.fetchval("SELECT count(*) FROM events WHERE event_type = 'appointment.booked'")
        broken = await violations(conn, CAPACITY)
    assert not any(broken.values()), broken
    assert active == logged == CAPACITY and overlaps == 0
    assert http_codes[201] + kafka_codes[201] == CAPACITY  # demand was 10× capacity: each booking answered 201
    assert http_codes[201] and kafka_codes[201]  # both entry points won places
