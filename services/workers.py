"""`slotledger serve --workers N`: the service on N processes, so the gateway and the ingestor use every core.

Each worker is its own `slotledger serve` process. All of them serve HTTP on the same port (SO_REUSEPORT: the
kernel spreads connections over them) and join the ingestor's consumer group (Kafka spreads the partitions);
the loops that must run once per deployment (projectors, relay, sweeper, webhooks) run in worker 0 only. A
create is decided by the worker owning its date (services/routing.py); every worker decides against PostgreSQL
with optimistic concurrency and validates its caches against the log, so what one worker acknowledged every
other one reads (DESIGN §2). The parent only starts, watches and stops
them: a worker that dies takes the others down with it, so a supervisor sees one failure and restarts all.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

SCALED = ("gateway", "ingestor")  # what every worker runs; the rest runs once, in worker 0
STOP_SECONDS = 40  # a worker finishes its ingestor batch (30 s at most) before it exits


def components_of(worker: int, components: tuple[str, ...]) -> tuple[str, ...]:
    return components if worker == 0 else tuple(c for c in components if c in SCALED)


def run(workers: int, components: tuple[str, ...], port: int) -> int:
    """Start the workers on `port`, wait until one exits or a signal asks them all to stop; the exit code is
    the first failing worker's, else 0."""
    env = {**os.environ, "SLOTLEDGER_HTTP_PORT": str(port), "SLOTLEDGER_HTTP_REUSE_PORT": "1",
           "SLOTLEDGER_WORKERS": str(workers)}
    children = []
    for worker in range(workers):
        mine = components_of(worker, components)
        if not mine:
            continue
        children.append(subprocess.Popen([sys.executable, "-m", "services.cli", "serve", "--only", ",".join(mine)],
                                         env={**env, "SLOTLEDGER_WORKER": str(worker)}))
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    code = 0
    while not stopping and all(child.poll() is None for child in children):
        time.sleep(0.2)
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        if child.returncode not in (0, -signal.SIGTERM) and code == 0:
            code = child.returncode if child.returncode > 0 else 1
    return code
