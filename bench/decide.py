"""The ingestor's decide path alone: creates as the Kafka bench publishes them, decoded, decided set-wise and
committed with their results by Ingestor._decide_batch, against a durable local PostgreSQL, without the broker
(no fetch, no produce, no relay). Prints this process's and PostgreSQL's CPU per command for each run. A
narrower lens than the Kafka phase, for changes to the Python of deciding; compare alternated runs, and the
ratio of the two figures where the machine's speed moves between runs.

  python -m bench.decide [--commands 20000] [--batch 2000] [--runs 3]
"""
from __future__ import annotations

import argparse
import json
import time
from types import SimpleNamespace

from bench.run import kafka_create, postgres_alone, set_up_clinic, tree_cpu
from services.cli import _collect_cycles_rarely, _run_service
from services.ingestor import Ingestor
from services.runtime import Runtime


def commands(clinic: dict, run: int, count: int) -> list[bytes]:
    """What bench.run's kafka phase publishes, a new patient each."""
    return [json.dumps(kafka_create(clinic, i, f"+3{run}{i:08d}")[1]).encode() for i in range(count)]


async def decide(ingestor: Ingestor, values: list[bytes], batch: int) -> int:
    """The commands decided and committed as the ingestor's batches are (a message needs only its value here);
    how many were booked."""
    ok = 0
    for at in range(0, len(values), batch):
        items = await ingestor._decide_batch([SimpleNamespace(value=v) for v in values[at:at + batch]])
        ok += sum(1 for item in items if item.result and item.result["ok"])
    return ok


async def main(count: int, batch: int, runs: int) -> None:
    with postgres_alone("slotledger-decide-") as (pg, settings):
        clinic = await set_up_clinic(settings)
        runtime = Runtime(settings, components=())
        await runtime.start()
        _collect_cycles_rarely()  # as the service runs
        try:
            for run in range(runs):
                values = commands(clinic, run, count)
                ingestor = Ingestor(settings, runtime.pool, runtime.handler)
                python, postgres, started = time.process_time(), tree_cpu(pg.process.pid), time.perf_counter()
                ok = await decide(ingestor, values, batch)
                python, postgres = time.process_time() - python, tree_cpu(pg.process.pid) - postgres
                print(f"run {run}: {ok:,} of {count:,} booked, {count / (time.perf_counter() - started):,.0f} cmd/s;"
                      f" CPU per command: python {1e6 * python / count:.0f} µs, postgres {1e6 * postgres / count:.0f} µs",
                      flush=True)
        finally:
            await runtime.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commands", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=2_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    _run_service(main(args.commands, args.batch, args.runs))
