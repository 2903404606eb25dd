"""The load generator: its own process (so the service's event loop never measures itself), a lean asyncio
HTTP/1.1 client (bench/http_client.py) on keep-alive connections. Prints one JSON object with the figures.

  python -m bench.loadgen spread --url U --key K --clients 64 --seconds 10 --days 200 [--lag-every 20]
  python -m bench.loadgen hot --url U --key K --requests 1000 --when ISO
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from datetime import date, datetime, timedelta, timezone

from bench.http_client import HttpClient

try:
    import uvloop
except ImportError:
    uvloop = None

SESSIONS = ((8, 12), (12, 16), (16, 20))  # local hours of the bench clinic's three windows (UTC org)


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def summary_ms(values: list[float]) -> dict:
    return {f"p{p}": round(percentile(values, p) * 1000, 2) if values else None for p in (50, 95, 99)}


def caller_phone(run: int, n: int) -> str:
    """A caller's phone, unique per run and `n` (< 10**9), as callers send them: E.164 digits the service parses
    as it parses real ones (+49, whose national numbers may run to 13 digits: the run's 4, then n's 9). The
    phones were hex run ids once: text with letters fails the parse in 4 µs, where a real number takes 20."""
    return f"+49{run}{n:09d}"


def _spread_body(days: int, phone: str) -> dict:
    day = date.today() + timedelta(days=random.randint(1, days))
    start, end = random.choice(SESSIONS)
    moment = datetime(day.year, day.month, day.day, random.randint(start, end - 1), random.choice((0, 15, 30, 45)),
                      tzinfo=timezone.utc)
    return {"appointment_type": "General Checkup", "appointment_date": moment.isoformat().replace("+00:00", "Z"),
            "patient_name": "Bench Patient", "parent_phone": phone}


async def spread(url: str, key: str, clients: int, seconds: float, days: int, lag_every: int) -> dict:
    latencies: list[float] = []
    lags: list[float] = []
    errors: dict[str, int] = {}
    lag_tasks: set[asyncio.Task] = set()
    run = random.randint(1000, 9999)
    http = HttpClient(url, key)
    await http.connect(clients)

    async def visible_after(appointment_id: str, committed: float) -> None:
        # Read-after-write: a GET sent as soon as the create's response arrived. Anything but 200 is a miss
        # (DESIGN §2: there must be none); the time is from the response to the GET's answer.
        first = True
        while True:
            status, _ = await http.request("GET", f"/v1/appointments/{appointment_id}")
            if status == 200:
                lags.append(time.perf_counter() - committed)
                return
            if first:
                errors["read_after_write_miss"] = errors.get("read_after_write_miss", 0) + 1
                first = False
            if time.perf_counter() - committed > 10:
                errors["lag_timeout"] = errors.get("lag_timeout", 0) + 1
                return
            await asyncio.sleep(0.005)

    async def client(c: int, deadline: float) -> None:
        i = 0
        while time.perf_counter() < deadline:
            i += 1
            body = _spread_body(days, caller_phone(run, c * 1_000_000 + i))
            started = time.perf_counter()
            try:
                status, payload = await http.request("POST", "/v1/appointments", body)
            except (OSError, asyncio.IncompleteReadError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                continue
            done = time.perf_counter()
            if status == 201:
                latencies.append(done - started)
                if lag_every and len(latencies) % lag_every == 0:  # every n-th create of all clients
                    task = asyncio.create_task(visible_after(payload["appointment_id"], done))
                    lag_tasks.add(task)
                    task.add_done_callback(lag_tasks.discard)
            else:
                code = ((payload or {}).get("error") or {}).get("code", str(status))
                errors[code] = errors.get(code, 0) + 1

    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(*(client(c, deadline) for c in range(clients)))
    elapsed = time.perf_counter() - started
    await asyncio.gather(*list(lag_tasks))
    await http.close()
    return {"clients": clients, "seconds": round(elapsed, 2), "creates": len(latencies),
            "creates_per_s": round(len(latencies) / elapsed, 1), "latency_ms": summary_ms(latencies),
            "errors": sum(v for k, v in errors.items() if k not in ("lag_timeout", "read_after_write_miss")),
            "error_codes": errors, "read_after_write_misses": errors.get("read_after_write_miss", 0),
            "projection_lag_ms": {**summary_ms(lags), "samples": len(lags)}}


async def hot(url: str, key: str, requests: int, when: str, connections: int = 200) -> dict:
    run = random.randint(1000, 9999)
    statuses: dict[str, int] = {}
    http = HttpClient(url, key)
    await http.connect(connections)  # open before the burst: what is timed is the decisions
    gate = asyncio.Event()
    slots = asyncio.Semaphore(connections)

    async def one(i: int) -> None:
        await gate.wait()
        body = {"appointment_type": "General Checkup", "appointment_date": when,
                "patient_name": "Hot", "parent_phone": caller_phone(run, i)}
        async with slots:
            status, payload = await http.request("POST", "/v1/appointments", body)
        code = "201" if status == 201 else payload["error"]["code"]
        statuses[code] = statuses.get(code, 0) + 1

    tasks = [asyncio.create_task(one(i)) for i in range(requests)]
    await asyncio.sleep(0.1)
    started = time.perf_counter()
    gate.set()
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    await http.close()
    return {"requests": requests, "seconds": round(elapsed, 3), "decisions_per_s": round(requests / elapsed, 1),
            "succeeded": statuses.get("201", 0), "outcomes": statuses}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=("spread", "hot"))
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--days", type=int, default=200)
    parser.add_argument("--lag-every", type=int, default=50)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--when")
    args = parser.parse_args()
    run = uvloop.run if uvloop is not None else asyncio.run  # a cheaper client leaves more CPU to the service
    if args.scenario == "spread":
        result = run(spread(args.url, args.key, args.clients, args.seconds, args.days, args.lag_every))
    else:
        result = run(hot(args.url, args.key, args.requests, args.when))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
