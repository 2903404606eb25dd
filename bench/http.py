"""HTTP creates alone, alternated between service layouts: which components share the serving process, and
how many processes share the port. A durable local PostgreSQL and a broker as bench.run starts them; each
layout runs as a fresh `slotledger serve` for every round, against the same clinic, with bench.run's
http-spread load. Prints creates/s, latency and cores busy per run. A narrower lens than the full bench's
http phase, for questions such as "what does the relay in the serving process cost?" or "what does a second
worker give one org?"; compare alternated runs, as the machine's speed moves by ±20%. With `--hot`, the load is
bench.run's hot window-day instead (1,000 creates at once on one window-day with 200 places, on days of their
own for every run): decisions/s and how many succeeded.

A layout is `components:workers`, optionally followed by `+components` that a process of their own runs beside
the workers (`gateway,projectors:1+relay`: the relay off the serving process's event loop).

  python -m bench.http [--layouts gateway,projectors,relay:1 gateway,projectors,relay:2] [--clients 64]
                       [--seconds 8] [--rounds 2] [--hot]
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from bench.run import (HOT_DAYS, LocalKafka, LocalPostgres, Settings, free_port, hot_window, set_up_clinic, spawn,
                       spread_load, stop, tree_cpu, wait_ready)
from services.cli import _run_service


async def main(layouts: list[str], clients: int, seconds: int, rounds: int, hot: bool) -> None:
    work = Path(tempfile.mkdtemp(prefix="slotledger-http-"))
    pg = LocalPostgres(work / "postgres", durable=True).start()
    kafka = LocalKafka(work / "kafka").start()
    try:
        settings = Settings(database_url=pg.url, kafka_bootstrap=kafka.bootstrap, topic_prefix="bench",
                            http_port=free_port(), state_dir=work)
        clinic = await set_up_clinic(settings)
        url = f"http://127.0.0.1:{settings.http_port}"
        hot_days = HOT_DAYS.stop  # each hot run books days of its own, after the full bench's
        for round_ in range(rounds):
            for layout in layouts:
                components, _, rest = layout.partition(":")
                count, _, apart = rest.partition("+")
                workers = int(count or 1)
                service = spawn(components, settings, work / "service.log", workers)
                # components in a process of their own, serving no HTTP (`serve --only relay` beside the workers)
                companion = spawn(apart, settings, work / "companion.log") if apart else None
                try:
                    wait_ready(url, workers)
                    if hot:
                        days = range(hot_days, hot_days + len(HOT_DAYS))
                        hot_days = days.stop
                        r = hot_window(clinic, url, days)
                        print(f"round {round_} {layout}: hot window-day, median {r['decisions_per_s']:,.0f}"
                              f" decisions/s (slowest {r['min_decisions_per_s']:,.0f}), succeeded {r['succeeded']}",
                              flush=True)
                        continue
                    companion_cpu = tree_cpu(companion.pid) if companion else 0.0
                    r = spread_load(url, clinic, clients, seconds, (service.pid, pg.process.pid, kafka.process.pid))
                    if companion:
                        r["cores_busy"]["companion"] = round((tree_cpu(companion.pid) - companion_cpu) / r["seconds"], 2)
                finally:
                    stop(service)
                    if companion:
                        stop(companion)
                latency = r["latency_ms"]
                print(f"round {round_} {layout}: {r['creates_per_s']:,.0f} creates/s at {clients} clients,"
                      f" p50/p95/p99 {latency['p50']}/{latency['p95']}/{latency['p99']} ms, errors {r['errors']};"
                      f" cores busy {', '.join(f'{k} {v}' for k, v in r['cores_busy'].items())}", flush=True)
    finally:
        kafka.stop()
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layouts", nargs="+", default=["gateway,projectors,relay:1", "gateway,projectors,relay:2"],
                        help="components:workers, as `slotledger serve --only … --workers …` takes them;"
                             " then optionally +components run by a process of their own")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--hot", action="store_true", help="the hot window-day's bursts instead of spread creates")
    args = parser.parse_args()
    _run_service(main(args.layouts, args.clients, args.seconds, args.rounds, args.hot))
