"""Read-your-writes without tokens (DESIGN §2), across processes: two `slotledger serve --only gateway` processes
on one database; every write on one is followed at once by a read on the other, from many clients at once.
A read must reflect every write acknowledged before it began: 0 misses."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest

from services.local.ports import free_port
from tests.builders import create_body
from tests.e2e.conftest import Api, local_at, local_date, new_org, setup_clinic, wait_healthy

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = 20
CREATES = 1000


@pytest.fixture
async def two_gateways(pg_url, schema):
    procs, urls = [], []
    for _ in range(2):
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLOTLEDGER_")}
        env.update(SLOTLEDGER_DATABASE_URL=pg_url, SLOTLEDGER_DATABASE_SCHEMA=schema, SLOTLEDGER_HTTP_PORT=str(port),
                   SLOTLEDGER_LOG_LEVEL="warning")
        procs.append(subprocess.Popen([sys.executable, "-m", "services.cli", "serve", "--only", "gateway"], env=env,
                                      cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        urls.append(f"http://127.0.0.1:{port}")
    try:
        async with aiohttp.ClientSession() as session:
            for url, proc in zip(urls, procs):
                await wait_healthy(session, url, proc)
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=20)


async def test_every_read_on_another_process_sees_the_write_before_it(runtime, http, two_gateways):
    setup = await setup_clinic(await new_org(runtime, http), max_slots=60)
    gateways = [Api(http, url, setup.key, setup.org_id, setup.tz, setup.ids) for url in two_gateways]
    # Per (date, session), for availability reads: creates acknowledged, and cancels sent. A read must count
    # every create acknowledged before it began, less any cancel that may have landed before it ended.
    acknowledged: Counter = Counter()
    cancelling: Counter = Counter()
    misses: list[str] = []
    counts = Counter()

    def other(n: int) -> Api:
        return gateways[(n + 1) % 2]

    async def client(c: int) -> None:
        for i in range(CREATES // CLIENTS):
            n = c * (CREATES // CLIENTS) + i
            writer, reader = gateways[n % 2], other(n)
            days, session, hhmm = 2 + n % 28, ("Morning", "Evening")[n // 28 % 2], ("09:30", "17:30")[n // 28 % 2]
            phone = f"+1555{n:07d}"
            status, made = await writer.post("/v1/appointments", create_body(local_at(setup, days, hhmm), phone,
                                                                             name=f"P{n}"))
            assert status == 201, made
            record = made["data"]
            acknowledged[(record["date"], session)] += 1
            counts["create"] += 1
            status, got = await reader.get(f"/v1/appointments/{record['appointment_id']}")
            counts["get after create"] += 1
            if status != 200 or got["data"]["version"] != record["version"]:
                misses.append(f"GET after create {record['appointment_id']}: {status}")
            if n % 5 == 0:
                status, found = await reader.get(f"/v1/appointments?parent_phone={quote(phone)}&date={record['date']}")
                counts["search after create"] += 1
                if status != 200 or record["appointment_id"] not in {a["appointment_id"] for a in found["data"]}:
                    misses.append(f"search after create {record['appointment_id']}")
            if n % 5 == 1:
                before = acknowledged[(record["date"], session)]
                status, rows = await reader.get(
                    f"/v1/appointment-slots/availability?date={record['date']}&appointment_type=General%20Checkup"
                    f"&session={session}")
                counts["availability after create"] += 1
                floor = before - cancelling[(record["date"], session)]
                if status != 200 or rows["data"][0]["booked"] < floor:
                    misses.append(f"availability {record['date']} {session}: {rows['data'][0]['booked']} < {floor}")
            if n % 5 == 2:
                status, patched = await writer.patch(f"/v1/appointments/{record['appointment_id']}",
                                                     {"notes": f"note {n}"})
                assert status == 200, patched
                status, got = await reader.get(f"/v1/appointments/{record['appointment_id']}")
                counts["get after patch"] += 1
                if status != 200 or got["data"].get("notes") != f"note {n}":
                    misses.append(f"GET after PATCH {record['appointment_id']}")
            if n % 10 == 3:
                cancelling[(record["date"], session)] += 1  # before sending: it may land before it is answered
                status, cancelled = await writer.patch(f"/v1/appointments/{record['appointment_id']}",
                                                       {"status": "cancelled"})
                assert status == 200, cancelled
                status, found = await reader.get(
                    f"/v1/appointments?status=cancelled&date={record['date']}&parent_phone={quote(phone)}")
                counts["search after cancel"] += 1
                if status != 200 or record["appointment_id"] not in {a["appointment_id"] for a in found["data"]}:
                    misses.append(f"cancelled search {record['appointment_id']}")

    await asyncio.gather(*(client(c) for c in range(CLIENTS)))
    assert misses == [], f"{len(misses)} misses, e.g. {misses[:5]}"
    assert counts == {"create": 1000, "get after create": 1000, "search after create": 200,
                      "availability after create": 200, "get after patch": 200, "search after cancel": 100}
    # and the tracking counts equal the true counts
    status, tracking = await gateways[0].get(
        f"/v1/schedule-tracking?date_from={local_date(setup, 2)}&date_to={local_date(setup, 29)}")
    assert sum(r["filled_count"] for r in tracking["data"]) == 900
