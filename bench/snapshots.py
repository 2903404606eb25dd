"""What a fresh process pays to read busy window-days: folded from the log, against read from their snapshots
(migration 015), through the unit of work as the ingestor and the gateway read them. The log is filled by
bench.run's fill_log (real bookings, ~260 a day over ~570 window-days at the default size); each run reads every
day in chunks of 150, in a new process's caches, first with no snapshot (so the read writes them), then again
from them. Prints wall time and each side's CPU per event.

  python -m bench.snapshots [--events 150000] [--runs 3]
"""
from __future__ import annotations

import argparse
import time

import asyncpg

from bench.run import fill_log, postgres_alone, set_up_clinic, tree_cpu
from services.cli import _collect_cycles_rarely, _run_service
from services.runtime import Runtime
from services.settings import Settings


async def read_all(settings: Settings, clinic: dict, pg_pid: int, streams: list[str], events: int,
                   label: str) -> None:
    runtime = Runtime(settings, components=())
    await runtime.start()
    try:
        uow, catalog = runtime.handler.uow, await runtime.handler.catalog(clinic["org_id"])
        python, postgres, started = time.process_time(), tree_cpu(pg_pid), time.perf_counter()
        async with runtime.pool.acquire() as conn:
            for at in range(0, len(streams), 150):
                await uow.days(conn, {stream: catalog for stream in streams[at:at + 150]})
        wall, python, postgres = (time.perf_counter() - started, time.process_time() - python,
                                  tree_cpu(pg_pid) - postgres)
        writing = time.perf_counter()
        await uow.close(seconds=600)  # the snapshots a long read queued
        print(f"{label:<15} {wall:6.2f} s   python {1e6 * python / events:5.1f} µs/event   postgres "
              f"{1e6 * postgres / events:5.1f} µs/event   then writing snapshots {time.perf_counter() - writing:.2f} s",
              flush=True)
    finally:
        await runtime.stop()


async def main(events: int, runs: int) -> None:
    with postgres_alone("slotledger-snapshots-") as (pg, settings):
        clinic = await set_up_clinic(settings)
        await fill_log(settings, clinic, events)
        runtime = Runtime(settings, components=())
        await runtime.start()
        async with runtime.pool.acquire() as conn:
            streams = [r[0] for r in await conn.fetch("SELECT stream_id FROM streams WHERE stream_id LIKE 'wd-%'")]
            events = await conn.fetchval("SELECT count(*) FROM events WHERE stream_id LIKE 'wd-%'")
            await conn.execute("VACUUM ANALYZE")
        await runtime.stop()
        print(f"{len(streams)} window-days, {events:,} events", flush=True)
        _collect_cycles_rarely()  # as the service runs
        for _ in range(runs):
            conn = await asyncpg.connect(pg.url)
            await conn.execute("TRUNCATE window_day_snapshots")
            await conn.close()
            await read_all(settings, clinic, pg.process.pid, streams, events, "from the log")
            await read_all(settings, clinic, pg.process.pid, streams, events, "from snapshots")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=150_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    _run_service(main(args.events, args.runs))
