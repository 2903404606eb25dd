"""`slotledger serve --workers 2`: two processes behind one port and in one consumer group. Connections reach
both, a create is decided by the worker owning its date, every write one acknowledged the other reads at once, Kafka commands are answered once each, capacity
holds across them, SIGTERM stops both cleanly, and a worker killed takes its sibling down (one failure for a
supervisor, never a half-running service)."""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp

from services.local.ports import free_port
from tests.builders import create_body
from tests.e2e.conftest import Api, local_at, new_org, setup_clinic, wait_healthy
from tests.e2e.kafka import command, encoded, publish, read_topic, results_by_command

ROOT = Path(__file__).resolve().parents[2]
CAPACITY = 25


def _workers(n: int, pg_url: str, schema: str, bootstrap: str, prefix: str, port: int, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLOTLEDGER_")}
    env.update(SLOTLEDGER_DATABASE_URL=pg_url, SLOTLEDGER_DATABASE_SCHEMA=schema, SLOTLEDGER_KAFKA_BOOTSTRAP=bootstrap,
               SLOTLEDGER_TOPIC_PREFIX=prefix, SLOTLEDGER_HTTP_PORT=str(port), SLOTLEDGER_LOG_LEVEL="warning",
               SLOTLEDGER_AUTH_FAILURES_PER_MINUTE="1000000")
    return subprocess.Popen([sys.executable, "-m", "services.cli", "serve", "--workers", str(n), "--only",
                             "gateway,ingestor"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(log, "w"))


@contextlib.asynccontextmanager
async def _two_workers(http, pg_url: str, schema: str, bootstrap: str, prefix: str, log: Path):
    """`serve --workers 2` started and both workers answering: (parent process, url, worker → pid)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    parent = _workers(2, pg_url, schema, bootstrap, prefix, port, log)
    try:
        await wait_healthy(http, url, parent)
        yield parent, url, await _all_workers(url, 2)
    finally:
        if parent.poll() is None:
            parent.kill()


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


async def _process_of_fresh_connection(url: str) -> dict:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        async with session.get(url + "/readyz") as resp:
            return (await resp.json())["process"]


async def _all_workers(url: str, want: int, deadline: float = 60) -> dict[int, int]:
    """worker → pid, from fresh connections, until `want` workers have answered."""
    seen: dict[int, int] = {}
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while len(seen) < want:
        assert loop.time() < end, f"only workers {sorted(seen)} answered"
        try:
            for process in await asyncio.gather(*(_process_of_fresh_connection(url) for _ in range(20))):
                seen[process["worker"]] = process["pid"]
        except aiohttp.ClientError:
            await asyncio.sleep(0.2)
    return seen


async def _handed_over(url: str) -> dict[str, float]:
    """slotledger_creates_handed_over_total by outcome, the highest any worker reports (fresh connections reach
    both)."""
    seen: dict[str, float] = {}
    for _ in range(20):
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            async with session.get(url + "/metrics") as resp:
                text = await resp.text()
        for line in text.splitlines():
            if line.startswith("slotledger_creates_handed_over_total{"):
                outcome = line.split('outcome="')[1].split('"')[0]
                seen[outcome] = max(seen.get(outcome, 0.0), float(line.rsplit(" ", 1)[1]))
    return seen


async def test_two_workers_share_the_port_the_group_and_every_write(runtime, http, pg_url, schema, kafka_bootstrap,
                                                                     topic_prefix, tmp_path):
    setup = await setup_clinic(await new_org(runtime, http), max_slots=CAPACITY)
    async with _two_workers(http, pg_url, schema, kafka_bootstrap, topic_prefix, tmp_path / "w.log") as (parent, url,
                                                                                                       pids):
        assert sorted(pids) == [0, 1] and len(set(pids.values())) == 2

        # Each create on a fresh connection (either worker), then read back on other fresh connections.
        fresh = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        try:
            api = Api(fresh, url, setup.key, setup.org_id, setup.tz, setup.ids)

            async def create_then_read(n: int) -> tuple[int, list[int]]:
                status, body = await api.post("/v1/appointments", create_body(
                    local_at(setup, 3, f"{9 + n % 3:02d}:{n % 4 * 15:02d}"), f"+1777{n:06d}"))
                if status != 201:
                    return status, []
                reads = [await api.get(f"/v1/appointments/{body['appointment_id']}") for _ in range(4)]
                return status, [s for s, _ in reads]

            answers = await asyncio.gather(*(create_then_read(n) for n in range(40)))
        finally:
            await fresh.close()
        created = [reads for status, reads in answers if status == 201]
        assert len(created) == CAPACITY, [s for s, _ in answers]  # one window-day, both workers: capacity holds
        assert all(s == 409 for s, _ in answers if s != 201)  # SLOT_FULL
        assert all(reads == [200] * 4 for reads in created)  # read-your-writes on whichever worker answers
        # One date, one owner: the creates the other worker received were handed to it (services/routing.py).
        handed_over = await _handed_over(url)
        assert handed_over.get("answered", 0) + handed_over.get("refused", 0) > 0, handed_over
        assert not handed_over.get("lost") and not handed_over.get("decided_here"), handed_over

        commands = [command(setup.org_id, "create_appointment", create_body(local_at(setup, 5, "10:00"), f"+1888{n:06d}"))
                    for n in range(60)]
        await publish(kafka_bootstrap, f"{topic_prefix}.commands",
                      [encoded(c, f"key-{n % 8}") for n, c in enumerate(commands)])
        wanted = {c["command_id"] for c in commands}
        records = await read_topic(kafka_bootstrap, f"{topic_prefix}.command-results",
                                   lambda recs: wanted <= set(results_by_command(recs)), 90)
        results = results_by_command(records)
        assert all(len(results[c]) == 1 for c in wanted)
        assert sum(results[c][0]["ok"] for c in wanted) == CAPACITY  # the second window-day fills exactly

        parent.send_signal(signal.SIGTERM)
        assert parent.wait(60) == 0
        assert all(_gone(pid) for pid in pids.values())


async def test_a_killed_worker_takes_its_sibling_down(runtime, http, pg_url, schema, kafka_bootstrap, topic_prefix,
                                                      tmp_path):
    async with _two_workers(http, pg_url, schema, kafka_bootstrap, topic_prefix, tmp_path / "w.log") as (parent, _,
                                                                                                       pids):
        os.kill(pids[1], signal.SIGKILL)
        assert parent.wait(60) != 0  # a supervisor sees the failure
        await asyncio.sleep(0.5)
        assert _gone(pids[0])
