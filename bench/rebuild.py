"""The projection rebuild alone: a durable local PostgreSQL without a broker, its log filled with real bookings
(bench.run's fill_log), then every projection rebuilt from it `--runs` times. Prints events/s and this process's
and PostgreSQL's CPU per event for each run: a narrower lens than the full bench's rebuild phase, for changes
to the rebuild or to the read models' storage. Compare alternated runs; this machine's speed moves by ±20%.

  python -m bench.rebuild [--events 300000] [--runs 3]
"""
from __future__ import annotations

import argparse

from bench.run import fill_log, postgres_alone, set_up_clinic, time_rebuild
from services.cli import _collect_cycles_rarely, _run_service


async def main(events: int, runs: int) -> None:
    with postgres_alone("slotledger-rebuild-") as (pg, settings):
        clinic = await set_up_clinic(settings)
        print(f"log filled to {await fill_log(settings, clinic, events):,} events", flush=True)
        _collect_cycles_rarely()  # as the service runs
        for run in range(runs):
            r = await time_rebuild(settings, pg.process.pid)
            cpu = r["cpu_us_per_event"]
            print(f"run {run}: {r['log_events']:,} events in {r['seconds']} s, {r['events_per_s']:,.0f} ev/s;"
                  f" CPU per event: python {cpu['python']} µs, postgres {cpu['postgres']} µs", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    _run_service(main(args.events, args.runs))
