"""The projection rebuild alone: a durable local PostgreSQL without a broker, its log filled with real bookings
(bench.run's fill_log), then every projection rebuilt from it `--runs` times, each time on a settled database
(bench.run.time_rebuild: VACUUM (ANALYZE) and a CHECKPOINT first). Prints events/s and this process's
and PostgreSQL's CPU per event for each run: a narrower lens than the full bench's rebuild phase, for changes
to the rebuild or to the read models' storage. Compare alternated runs; this machine's speed moves by ±20%.

With `--statements`, each run also prints the wall time the rebuild's connections spent awaiting each kind of
statement (the log's reads, each table's COPY, each index build, the commit). The reads overlap the writes,
so the figures add up to more than the run; what the writer alone awaits after the last COPY (index builds,
counts, commit) is time no batch is being read or projected.

  python -m bench.rebuild [--events 300000] [--runs 3] [--statements]
"""
from __future__ import annotations

import argparse
import contextlib
import re
import time
from collections import Counter, defaultdict

from asyncpg.connection import Connection

from bench.run import fill_log, postgres_alone, set_up_clinic, time_rebuild
from services.cli import _collect_cycles_rarely, _run_service

_TIMED = ("execute", "fetch", "fetchval", "copy_records_to_table")
_SETTLING = ("VACUUM", "CHECKPOINT")  # time_rebuild's settle before each run, not the rebuild's own statements


@contextlib.contextmanager
def statement_times():
    """Wall time awaited per kind of statement, on every asyncpg connection while inside (a measuring wrapper
    around the methods the rebuild calls; nothing else changes)."""
    seconds: dict[str, float] = defaultdict(float)
    calls: Counter = Counter()
    originals = {name: getattr(Connection, name) for name in _TIMED}

    def timed(name: str, method):
        async def call(self, query, *args, **kwargs):
            started = time.perf_counter()
            try:
                return await method(self, query, *args, **kwargs)
            finally:
                kind = _kind(name, query)
                seconds[kind] += time.perf_counter() - started
                calls[kind] += 1
        return call

    for name, method in originals.items():
        setattr(Connection, name, timed(name, method))
    try:
        yield seconds, calls
    finally:
        for name, method in originals.items():
            setattr(Connection, name, method)


def _kind(method: str, query: str) -> str:
    if method == "copy_records_to_table":
        return f"COPY {query}"
    words = " ".join(query.split())
    if match := re.match(r"CREATE (UNIQUE )?INDEX (\S+)", words):
        return f"CREATE INDEX {match[2]}"
    if "FROM events" in words:
        return "read the log"
    return words[:40]


async def main(events: int, runs: int, statements: bool) -> None:
    with postgres_alone("slotledger-rebuild-") as (pg, settings):
        clinic = await set_up_clinic(settings)
        print(f"log filled to {await fill_log(settings, clinic, events):,} events", flush=True)
        _collect_cycles_rarely()  # as the service runs
        for run in range(runs):
            with statement_times() if statements else contextlib.nullcontext((None, None)) as (seconds, calls):
                r = await time_rebuild(settings, pg.process.pid)
            cpu = r["cpu_us_per_event"]
            print(f"run {run}: {r['log_events']:,} events in {r['seconds']} s, {r['events_per_s']:,.0f} ev/s;"
                  f" CPU per event: python {cpu['python']} µs, postgres {cpu['postgres']} µs"
                  f" (settled {r['settle_seconds']} s before it)", flush=True)
            for kind, spent in sorted((seconds or {}).items(), key=lambda item: -item[1]):
                if spent >= 0.01 and not kind.startswith(_SETTLING):
                    print(f"  {spent:6.2f} s  {calls[kind]:4d} ×  {kind}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--statements", action="store_true", help="time each kind of statement the rebuild awaits")
    args = parser.parse_args()
    _run_service(main(args.events, args.runs, args.statements))
