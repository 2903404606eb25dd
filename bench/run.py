"""`make bench` (short) and `make bench FULL=1`: the real stack on this machine, measured from outside.

A fresh durable PostgreSQL and a Kafka broker are started in a temporary directory; the service runs as its
own process (`slotledger serve`), the HTTP load comes from another (bench/loadgen.py), and the PostgreSQL
ceiling is pgbench's one-row INSERT transaction against the same server in the same run. Prints a table and
writes bench/out/report-<time>.json (+ .txt). Figures only: nothing here passes or fails.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from domain import catalog as cat
from domain import windowday as wd
from domain.timerules import WEEKDAYS
from services.outcome import Meta
from services.keys import SCOPES, create_key
from services.local.kafka import KAFKA_VERSION, LocalKafka
from services.local.ports import free_port
from services.local.postgres import LocalPostgres, bin_dir
from bench import plots
from bench.receiver import LagReceiver, RelayLagReader
from services.projector import rebuild
from services.dispatcher import CHECKPOINT as DISPATCHER_CHECKPOINT
from services.runtime import Runtime
from services.settings import Settings
from services.store.eventstore import Append, NewEvent

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
SPREAD_DAYS = 200   # http-spread and kafka-ingest: days 1..200 × 3 windows = 600 window-days
HOT_DAYS = range(201, 206)  # hot-window: one burst on each, a window-day of its own
FILL_DAYS = range(210, 400)  # synthetic history for the rebuild


def machine() -> dict:
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    model = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    return {"cores": os.cpu_count(), "memory_gb": round(mem_kb / 1024 / 1024, 1),
            "cpu": model.group(1).strip() if model else platform.processor(), "python": platform.python_version(),
            "kernel": platform.release(), "kafka": KAFKA_VERSION}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the stack ---------------------------------------------------------------------------------------------

def service_env(settings: Settings) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLOTLEDGER_")}
    env.update(SLOTLEDGER_DATABASE_URL=settings.database_url, SLOTLEDGER_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
               SLOTLEDGER_TOPIC_PREFIX=settings.topic_prefix, SLOTLEDGER_HTTP_PORT=str(settings.http_port),
               SLOTLEDGER_LOG_LEVEL="warning", SLOTLEDGER_WEBHOOKS_ALLOW_PRIVATE="1")
    return env


def spawn(components: str, settings: Settings, log_path: Path, workers: int = 1,
          consumers: int | None = None) -> subprocess.Popen:
    env = service_env(settings)
    if consumers is not None:
        env["SLOTLEDGER_INGEST_CONSUMERS"] = str(consumers)
    return subprocess.Popen([sys.executable, "-m", "services.cli", "serve", "--only", components,
                             "--workers", str(workers)],
                            env=env, stdout=subprocess.DEVNULL, stderr=open(log_path, "ab"),
                            cwd=ROOT)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def wait_ready(url: str, workers: int = 1, timeout: float = 60) -> None:
    """Until each of the service's `workers` has answered ready: a load started while only the first listens
    would open every connection on that one (SO_REUSEPORT spreads connections only over the sockets listening
    when they arrive), and two workers would be measured as one."""
    deadline = time.monotonic() + timeout
    ready: set[int] = set()
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as response:  # a new connection each time
                if response.status == 200:
                    ready.add(json.load(response)["process"]["worker"])
                    if len(ready) >= workers:
                        return
                    continue
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the service did not become ready")


_TICK = os.sysconf("SC_CLK_TCK")
# Beside each process's CPU: every core's, the bench's own included. Whether the machine had CPU to spare is
# read from this over the steady window, not from the processes' share of the whole run, which the ingestor's
# start and its group's forming (seconds with nothing to do) dilute.
MACHINE = "machine"
BENCH = "bench"  # this process: the load's publisher and the results' reader (the ingestor's time is its own)


def _cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):  # gone (the read fails with ESRCH if it exits meanwhile)
        return 0.0
    return _seconds(fields)


def _seconds(fields: list[str]) -> float:
    """CPU seconds in a /proc/<pid>/stat's fields after the name: its own and its reaped children's."""
    return (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / _TICK


def cpu_snapshot(service: int, postgres: int, kafka: int) -> dict[str, float]:
    """CPU seconds so far of the service (with its workers), PostgreSQL (postmaster and backends) and the
    broker."""
    service_cpu, postgres_cpu = tree_cpus(service, postgres)
    return {"service": service_cpu, "postgres": postgres_cpu, "kafka": _cpu(kafka)}


def tree_cpu(pid: int) -> float:
    """CPU seconds so far of a process and its children (the service's workers, PostgreSQL's backends)."""
    return tree_cpus(pid)[0]


def tree_cpus(*pids: int) -> list[float]:
    """tree_cpu of each, from one pass over /proc (~3 ms on this machine: sampled every 0.2 s, two passes took
    a few percent of a core from the system under test)."""
    own: dict[int, float] = {}
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):  # a process that exited meanwhile
            continue
        pid = int(stat.parent.name)
        own[pid] = _seconds(fields)
        children.setdefault(int(fields[1]), []).append(pid)
    return [own.get(pid, 0.0) + sum(own[child] for child in children.get(pid, ())) for pid in pids]


def machine_cpu() -> float:
    """CPU seconds every core of the machine has spent busy so far (/proc/stat: all but idle and iowait)."""
    ticks = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / _TICK


def cpu_share(before: dict[str, float], after: dict[str, float], seconds: float, loadgen_cpu: float) -> dict:
    used = {k: after[k] - before[k] for k in before}
    used["loadgen"] = loadgen_cpu
    return {k: round(v / seconds, 2) for k, v in used.items()}  # cores busy on average


def rss_mb(pid: int) -> float:
    return round(int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1)) / 1024, 1)


@contextlib.contextmanager
def postgres_alone(prefix: str):
    """A durable local PostgreSQL in a directory of its own, and the service's settings for it without a broker
    (for the lenses that need no Kafka: bench.decide, bench.snapshots)."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    pg = LocalPostgres(work / "postgres", durable=True).start()
    try:
        yield pg, Settings(database_url=pg.url, kafka_bootstrap="127.0.0.1:1", topic_prefix="bench",
                           http_port=free_port(), state_dir=work)
    finally:
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)


async def set_up_clinic(settings: Settings) -> dict:
    """One org on UTC: a service, a branch, Morning/Afternoon/Evening windows every day with room for all."""
    rt = Runtime(settings, components=())
    await rt.start()
    try:
        h, meta = rt.handler, Meta(actor="bench")
        org_id = (await h.create_org("Bench Clinic", "UTC", meta)).org_id
        await h.configure(org_id, f"org-{org_id}", lambda c: cat.change_settings(c, {
            "min_notice_hours": 0, "max_advance_booking_days": 420}), meta)
        service_id, branch_id = cat.new_id(), cat.new_id()
        await h.configure(org_id, f"service-{service_id}",
                          lambda c: cat.add_service(c, service_id, "General Checkup", 30), meta)
        await h.configure(org_id, f"branch-{branch_id}", lambda c: cat.add_branch(c, branch_id, "Main"), meta)
        windows = {}
        for day in WEEKDAYS:
            for session, start, end in (("Morning", "08:00", "12:00"), ("Afternoon", "12:00", "16:00"),
                                        ("Evening", "16:00", "20:00")):
                window = cat.Window(cat.new_id(), branch_id, day, session, start, end, 100_000, None, session[0])
                await h.configure(org_id, f"window-{window.window_id}", lambda c, w=window: cat.create_window(c, w),
                                  meta)
                windows[(day, session)] = window.window_id
        async with rt.pool.acquire() as conn:
            key = await create_key(conn, org_id, list(SCOPES), "bench")
        return {"org_id": org_id, "key": key, "service_id": service_id, "branch_id": branch_id, "windows": windows}
    finally:
        await rt.stop()


# -- measurements ------------------------------------------------------------------------------------------

async def webhook_lag(settings: Settings, clinic: dict, url: str, seconds: int, logs: Path) -> dict:
    """http-spread at 16 clients with every booking also delivered as a webhook by a dispatcher process of its
    own: the time from each event's commit to its receipt."""
    receiver = LagReceiver().start()
    dispatcher = spawn("webhooks", settings, logs)
    await caught_up(settings, DISPATCHER_CHECKPOINT)  # it reads the log from the start once: not measured
    req = urllib.request.Request(f"{url}/v1/webhooks", method="POST",
                                 data=json.dumps({"url": receiver.url, "event_types": ["appointment.booked"]}).encode(),
                                 headers={"Authorization": f"Bearer {clinic['key']}", "Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=10).read()
    try:
        load = loadgen("spread", "--url", url, "--key", clinic["key"], "--clients", "16", "--seconds", str(seconds),
                       "--days", str(SPREAD_DAYS), "--lag-every", "0")
        receiver.wait_quiet()
    finally:
        stop(dispatcher)
    return {"creates": load["creates"], "creates_per_s": load["creates_per_s"], **receiver.summary()}



async def caught_up(settings: Settings, checkpoint: str, timeout: float = 300) -> None:
    """Until the log reader saving `checkpoint` has reached the log's end as it is now."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        end = await conn.fetchrow("SELECT transaction_id::text AS tx, global_position FROM events"
                                  " ORDER BY transaction_id DESC, global_position DESC LIMIT 1")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if end is None or await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM checkpoints WHERE name = $1"
                    " AND (transaction_id, global_position) >= ($2::text::xid8, $3::bigint))",
                    checkpoint, end["tx"], end["global_position"]):
                return
            await asyncio.sleep(0.2)
        raise TimeoutError(f"{checkpoint} did not catch up with the log in {timeout} s")
    finally:
        await conn.close()


def pgbench(pg_url_port: int, clients: int, seconds: int, script: Path) -> float:
    result = subprocess.run(
        [str(bin_dir() / "pgbench"), "-n", "-h", "127.0.0.1", "-p", str(pg_url_port), "-U", "postgres",
         "-c", str(clients), "-j", str(min(clients, os.cpu_count() or 2)), "-T", str(seconds), "-M", "prepared",
         "-f", str(script), "postgres"], capture_output=True, text=True, check=True)
    return float(re.search(r"tps = ([\d.]+)", result.stdout).group(1))


def spread_load(url: str, clinic: dict, clients: int, seconds: int, pids: tuple[int, int, int], *extra: str) -> dict:
    """http-spread's load from `clients` clients for `seconds`, its figures with `cores_busy`: what the service,
    PostgreSQL and the broker (`pids`, as cpu_snapshot takes them) and the load generator used meanwhile."""
    before = cpu_snapshot(*pids)
    result = loadgen("spread", "--url", url, "--key", clinic["key"], "--clients", str(clients),
                     "--seconds", str(seconds), "--days", str(SPREAD_DAYS), *extra)
    result["cores_busy"] = cpu_share(before, cpu_snapshot(*pids), result["seconds"], result["loadgen_cpu_seconds"])
    return result


def loadgen(*args: str) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run([sys.executable, "-m", "bench.loadgen", *args], capture_output=True, text=True,
                            cwd=ROOT, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    report = json.loads(result.stdout)
    report["loadgen_cpu_seconds"] = round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2)
    return report


def profile_start(pid: int, seconds: int, out: Path) -> subprocess.Popen | None:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        log("py-spy is not installed: no profile (pip install py-spy)")
        return None
    return subprocess.Popen([py_spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "200",
                             "--format", "raw", "--output", str(out), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _frame(raw: str) -> str:
    """'name (path/file.py:12)' → 'name (file.py)'."""
    name, _, where = raw.partition(" (")
    return f"{name} ({where.split(':')[0].split('/')[-1]})" if where else name


def profile_top(raw: Path, n: int = 15) -> dict:
    """Top functions of py-spy's folded stacks: by own samples and by inclusive samples."""
    own: Counter = Counter()
    inclusive: Counter = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():  # a line cut short when py-spy was stopped
            continue
        frames = [_frame(f) for f in stack.split(";")]
        samples = int(count)
        total += samples
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    return {"samples": total,
            "own": [(f, round(100 * c / total, 1)) for f, c in own.most_common(n)],
            "inclusive": [(f, round(100 * c / total, 1)) for f, c in inclusive.most_common(n)
                          if not f.startswith(("<module>", "run (", "_run_once", "run_forever", "run_until"))]}


def hot_window(clinic: dict, url: str, days: range = HOT_DAYS) -> dict:
    """1,000 simultaneous creates on one window-day with 200 places, once on each of `days`: one burst
    lasts half a second, and a single one moved by a third between runs of the same code. The median burst is
    the figure; every burst must let exactly 200 through."""
    bursts = []
    for offset in days:
        hot_date = dt.date.today() + dt.timedelta(days=offset)
        window_id = clinic["windows"][(WEEKDAYS[hot_date.weekday()], "Morning")]
        req = urllib.request.Request(f"{url}/v1/schedule-tracking/{window_id}/{hot_date}", method="PATCH",
                                     data=json.dumps({"max_slots": 200}).encode(),
                                     headers={"Authorization": f"Bearer {clinic['key']}",
                                              "Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=10).read()
        bursts.append(loadgen("hot", "--url", url, "--key", clinic["key"], "--requests", "1000",
                              "--when", f"{hot_date}T09:00:00Z"))
    rates = sorted(b["decisions_per_s"] for b in bursts)
    return {"bursts": bursts, "decisions_per_s": statistics.median(rates), "min_decisions_per_s": rates[0],
            "max_decisions_per_s": rates[-1], "succeeded": [b["succeeded"] for b in bursts]}


def kafka_create(clinic: dict, i: int, phone: str) -> tuple[bytes, dict]:
    """The kafka phase's i-th command, a create over SPREAD_DAYS days × 3 windows, and its routing key (the
    org and the day)."""
    day = dt.date.today() + dt.timedelta(days=1 + i % SPREAD_DAYS)
    moment = f"{day.isoformat()}T{8 + (i // SPREAD_DAYS) % 12:02d}:{(i * 7) % 4 * 15:02d}:00Z"
    body = {"command_id": str(uuid.uuid4()), "org_id": clinic["org_id"], "type": "create_appointment",
            "payload": {"appointment_type": clinic["service_id"], "appointment_date": moment,
                        "patient_name": "Kafka Bench", "parent_phone": phone}}
    return f"{clinic['org_id']}|{day.isoformat()}".encode(), body


async def kafka_ingest(settings: Settings, clinic: dict, commands: int, logs: Path, profile: Path | None,
                       pids: tuple[int, int, int], workers: int = 1, consumers: int | None = None,
                       run: int = 1) -> dict:
    """`commands` creates over many window-days published first, then an ingestor process started on them;
    `pids`: PostgreSQL's, the broker's and the running service's (its relay publishes every event the
    ingestor appends), for the cores each keeps busy meanwhile."""
    topic, results_topic = settings.topic("commands"), settings.topic("command-results")
    settled = await settle_database(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=20, max_batch_size=262144)
    await producer.start()
    started = time.perf_counter()
    try:
        sends = []
        ours = set()  # this run's command ids: the results topic also holds an earlier run's results
        for i in range(commands):
            key, body = kafka_create(clinic, i, f"+39{run:02d}{i:07d}")  # each run its own patients
            ours.add(body["command_id"])
            sends.append(await producer.send(topic, json.dumps(body).encode(), key=key))
        await asyncio.gather(*sends)
        partitions = [TopicPartition(results_topic, p) for p in sorted(await producer.partitions_for(results_topic))]
    finally:
        await producer.stop()
    published = time.perf_counter() - started
    log(f"published {commands} commands in {published:.1f}s; starting the ingestor")
    # The results are counted as they are produced (the topic's end offsets, one cheap request) and read only
    # once all are there: read as they came, at 5,000-6,000 a second, this process took 0.11 of the machine's
    # 2 cores in the steady window, CPU the system under test then did not have.
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    consumer.assign(partitions)
    earlier = await consumer.end_offsets(partitions)  # results of earlier runs end here
    for tp, offset in earlier.items():
        consumer.seek(tp, offset)
    ingestor = spawn("ingestor", settings, logs, workers, consumers)
    spy = profile_start(ingestor.pid, 900, profile) if profile is not None and workers == 1 else None
    postgres, kafka, service = pids

    def cpu() -> dict[str, float]:
        ingestor_cpu, postgres_cpu = tree_cpus(ingestor.pid, postgres)
        return {"ingestor": ingestor_cpu, "postgres": postgres_cpu, "kafka": _cpu(kafka), "relay": _cpu(service),
                BENCH: time.process_time(), MACHINE: machine_cpu()}

    async def produced() -> tuple[int, dict[TopicPartition, int]]:
        ends = await consumer.end_offsets(partitions)
        return sum(ends[tp] - earlier[tp] for tp in partitions), ends

    stamps: list[int] = []  # each command's first result (a redelivery after a rebalance answers it again)
    answered: set[str] = set()
    repeated = ok = 0

    async def read(until: dict[TopicPartition, int]) -> None:
        nonlocal repeated, ok
        while [tp for tp in partitions if await consumer.position(tp) < until[tp]]:
            for records in (await consumer.getmany(timeout_ms=500, max_records=5000)).values():
                for record in records:
                    result = json.loads(record.value)
                    command_id = result["command_id"]
                    if command_id not in ours:
                        continue
                    if command_id in answered:
                        repeated += 1
                        continue
                    answered.add(command_id)
                    stamps.append(record.timestamp)
                    ok += result["ok"]

    maintenance_before = await maintenance_runs(settings)
    cpu_before = cpu()
    launched = time.perf_counter()
    wall, cpu_after = None, None
    # (when, results produced, CPU used so far), every 0.2 s: the steady rate and CPU per command are read
    # between the samples at 10% and at 90% of the results. From the first result instead, a batch per consumer
    # decided before it (8 × 2,000 commands with two workers) was counted as done for free. The window is only
    # as good as the run is long beside what is in flight: at 10,000 commands it is not a measure.
    samples: list[tuple[float, int, dict]] = []
    try:
        while time.perf_counter() - launched < 900:
            await asyncio.sleep(0.2)
            done, ends = await produced()
            if done:
                samples.append((time.perf_counter(), done, cpu()))
            if done < commands:
                continue
            wall, cpu_after = samples[-1][0] - launched, samples[-1][2]
            await read(ends)
            if len(stamps) >= commands:  # else some were answered twice: the rest is still to come
                break
        if wall is None or len(stamps) < commands:  # out of time
            wall, cpu_after = time.perf_counter() - launched, cpu()
            await read((await produced())[1])
        maintenance = await maintenance_runs(settings, since=maintenance_before)
        cores = cpu_share(cpu_before, cpu_after, wall, 0)
        del cores["loadgen"]
    finally:
        await consumer.stop()
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes what it has sampled so far
            spy.wait(30)
        stop(ingestor)
    span = (max(stamps) - min(stamps)) / 1000 if len(stamps) > 1 else float("nan")
    steady = _steady(samples, commands)
    first = min(stamps) if stamps else 0
    per_second = Counter((stamp - first) // 1000 for stamp in stamps)
    timeline = [[second, per_second.get(second, 0)] for second in range(int(max(per_second, default=-1)) + 1)]
    out = {"commands": commands, "results": len(stamps), "repeated_results": repeated, "ok": ok,
           "results_per_second": timeline, "publish_seconds": round(published, 1),
           "first_to_last_result_seconds": round(span, 2), "commands_per_s": round((len(stamps) - 1) / span, 1),
           "commands_per_s_steady": steady.get("commands_per_s"),
           "wall_seconds_from_process_start": round(wall, 1),
           "commands_per_s_from_process_start": round(len(stamps) / wall, 1), "cores_busy": cores,
           "cpu_us_per_command": steady.get("cpu_us_per_command", {}),
           "cores_busy_steady": steady.get("cores_busy", {}),
           "autovacuum_runs": maintenance, "settle_seconds": settled,
           "workers": workers, "consumers_per_worker": consumers}
    if profile is not None and profile.exists():
        out["profile"] = {**profile_top(profile), "raw": str(profile)}
    return out


def kafka_layout(run: dict) -> str:
    """A kafka-ingest run's layout as --kafka-layouts spells it: `2`, or `4x2` when it set the consumers."""
    consumers = run.get("consumers_per_worker")
    return f"{run.get('workers', 1)}x{consumers}" if consumers else str(run.get("workers", 1))


async def settle_database(settings: Settings) -> float:
    """VACUUM (ANALYZE) and a CHECKPOINT before a phase (pgbench, by default, vacuums before its runs too): the
    maintenance earlier phases' writes owe (autovacuum's passes over ~150,000 HTTP creates' rows, a checkpoint's
    full-page writes) is then not done inside this phase and counted in its CPU per command. The seconds it took."""
    started = time.perf_counter()
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute("VACUUM (ANALYZE)", timeout=900)
        await conn.execute("CHECKPOINT", timeout=900)
    finally:
        await conn.close()
    return round(time.perf_counter() - started, 1)


async def maintenance_runs(settings: Settings, since: dict[str, int] | None = None) -> dict[str, int]:
    """How many times autovacuum has vacuumed and analysed the tables so far, or since an earlier count. A run
    that lands in a phase spends PostgreSQL's CPU on the tables earlier phases filled, and that phase's CPU per
    command carries it."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        row = await conn.fetchrow("SELECT coalesce(sum(autovacuum_count), 0)::int AS vacuum,"
                                  " coalesce(sum(autoanalyze_count), 0)::int AS analyze FROM pg_stat_user_tables")
    finally:
        await conn.close()
    return {k: v - (since or {}).get(k, 0) for k, v in row.items()}


def _steady(samples: list[tuple[float, int, dict]], commands: int) -> dict:
    """The rate, and each process's CPU per command, between the first samples that had seen 10% and 90% of the
    commands answered: the ingestor's start, its joining the group and its last batches trailing off are left
    out, and a window that opens and closes on a full pipeline counts about as much work as it sees answered."""
    low = next((s for s in samples if s[1] >= commands // 10), None)
    high = next((s for s in samples if s[1] >= commands * 9 // 10), None)
    if low is None or high is None or high[1] <= low[1] or high[0] <= low[0]:
        return {}
    answered, seconds = high[1] - low[1], high[0] - low[0]
    return {"commands_per_s": round(answered / seconds, 1),
            "cpu_us_per_command": {name: round(1e6 * (high[2][name] - used) / answered, 1)
                                   for name, used in low[2].items() if name not in (BENCH, MACHINE)},
            "cores_busy": {name: round((high[2][name] - used) / seconds, 2) for name, used in low[2].items()}}


async def fill_log(settings: Settings, clinic: dict, target: int) -> int:
    """Top the log up to `target` events with real bookings decided by the domain (appended directly, not
    through HTTP: this is the rebuild's input, not a measurement)."""
    rt = Runtime(settings, components=())
    await rt.start()
    try:
        async with rt.pool.acquire() as conn:
            have = await conn.fetchval("SELECT count(*) FROM events")
        missing = target - have
        if missing <= 0:
            return have
        catalog = await rt.handler.catalog(clinic["org_id"])
        service, branch = catalog.services[clinic["service_id"]], catalog.branches[clinic["branch_id"]]
        today = dt.date.today()
        now = dt.datetime.now(dt.timezone.utc)
        streams = [(today + dt.timedelta(days=d), hour) for d in FILL_DAYS for hour in (9, 13, 17)]
        per_stream = -(-missing // len(streams))
        n = 0
        appends = []
        for day, hour in streams:
            start = dt.datetime(day.year, day.month, day.day, hour, tzinfo=dt.timezone.utc)
            placement = wd.place(catalog, service, branch, start, None, now)
            window_day = wd.WindowDay(placement.window.window_id, day.isoformat())
            events = []
            for _ in range(per_stream):
                n += 1
                request = {"appointment_type": service.service_id, "patient_name": "History",
                           "parent_phone": f"+4{n:09d}"}
                for event in wd.book(catalog, window_day, placement, request, f"appt_{n:010d}", now):
                    window_day.apply(event)
                    events.append(NewEvent(event.type, event.data(), metadata={"actor": "bench-fill"}))
            appends.append(Append(window_day.stream_id, 0, events, org_id=uuid.UUID(clinic["org_id"])))
            if len(appends) == 20:
                await rt.store.append(appends)
                appends = []
        if appends:
            await rt.store.append(appends)
        async with rt.pool.acquire() as conn:
            return await conn.fetchval("SELECT count(*) FROM events")
    finally:
        await rt.stop()


async def time_rebuild(settings: Settings, postgres: int) -> dict:
    """The rebuild runs in this process: its CPU is this process's, beside PostgreSQL's (pid `postgres`).

    It starts on a settled database (settle_database), as the Kafka phase does. A log a deployment rebuilds is
    history its relay read as it was committed and autovacuum visited long ago. A log fill_log has just written
    (no relay reads it) is read for the first time by the rebuild, which then sets every tuple's hint bits and,
    with the data checksums PostgreSQL 18 enables by default, logs a full-page image of each page it so changes:
    22,310 full-page images against 6,522 and 564 MB of WAL against 444 in one 300,000-event rebuild
    (bench/reports/ab-session24.txt §6)."""
    settled = await settle_database(settings)
    maintenance_before = await maintenance_runs(settings)
    rt = Runtime(settings, components=())
    await rt.start()
    try:
        pg_before, python_before = tree_cpu(postgres), time.process_time()
        started = time.perf_counter()
        report = await rebuild(rt.pool, rt.store)
        elapsed = time.perf_counter() - started
        cpu = {"python": time.process_time() - python_before,
               "postgres": tree_cpu(postgres) - pg_before}
        log_events = max(r["events"] for r in report.values())
        return {"projections": {name: r["events"] for name, r in report.items()}, "seconds": round(elapsed, 2),
                "log_events": log_events,
                # each event of the log into every projection: the rate at which the log is rebuilt
                "events_per_s": round(log_events / elapsed, 1),
                "projected_events_per_s": round(sum(r["events"] for r in report.values()) / elapsed, 1),
                "cpu_us_per_event": {k: round(1e6 * v / log_events, 1) for k, v in cpu.items()},
                "settle_seconds": settled,
                "autovacuum_runs": await maintenance_runs(settings, since=maintenance_before)}
    finally:
        await rt.stop()


# -- the run -----------------------------------------------------------------------------------------------

def ratio(value: float | None, ceiling: float | None) -> float | None:
    return round(value / ceiling, 3) if value and ceiling else None


def cpu_line(unit: str, costs: dict[str, float], cores: int | None) -> str:
    """What one unit of work cost each process in CPU (where the time goes, which a rate alone does not say),
    and with `cores`, the rate the machine allows at that cost with every core busy (under a light load the
    cost holds idle work too, so there it says nothing)."""
    total = sum(costs.values())
    ceiling = f" → at most {cores * 1e6 / total:,.0f}/s on {cores} cores" if cores and total else ""
    return (f"  CPU per {unit} (µs): " + ", ".join(f"{name} {cost:,.0f}" for name, cost in costs.items())
            + f"; all {total:,.0f}{ceiling}")


def table(report: dict) -> str:
    c = report["ceiling_pgbench_tps"]
    cores = report["machine"]["cores"]
    lines = [f"slotledger bench ({report['mode']}) {report['started']} on {cores} cores, "
             f"{report['machine']['memory_gb']} GB ({report['machine']['cpu']})", "",
             f"{'measure':42} {'figure':>14} {'ratio to pgbench':>18}  target (DESIGN §7)"]

    def row(name: str, figure: str, r: float | None = None, target: str = "") -> None:
        lines.append(f"{name:42} {figure:>14} {(f'{r:.3f}' if r is not None else ''):>18}  {target}")

    def maintenance(phase: dict) -> None:
        """The settle before a phase and autovacuum's passes during it (settle_database, maintenance_runs)."""
        if phase.get("settle_seconds") is not None:
            row("  VACUUM (ANALYZE) and CHECKPOINT before it (s)", f"{phase['settle_seconds']}")
        if phase.get("autovacuum_runs"):
            row("  autovacuum during the phase: vacuums / analyses",
                "{vacuum} / {analyze}".format(**phase["autovacuum_runs"]))

    for clients in sorted(c, key=int):
        row(f"pgbench 1-row INSERT, {clients} clients (tps)", f"{c[clients]:,.0f}")
    for s in report["http_spread"]:
        k = str(s["clients"])
        row(f"http-spread {k} clients, {s.get('workers', 1)} worker(s) (creates/s)", f"{s['creates_per_s']:,.0f}",
            ratio(s["creates_per_s"], c.get(k)), "≥ 1,500/s, ratio ≥ 0.1 (64 clients)" if k == "64" else "")
        row("  latency p50/p95/p99 ms", "/".join(str(s["latency_ms"][p]) for p in ("p50", "p95", "p99")), None,
            "p99 < 50 ms" if k == "64" else "")
        row("  errors", str(s["errors"]))
        row("  cores busy: " + ", ".join(f"{k} {v}" for k, v in s["cores_busy"].items()), "")
        if s["creates_per_s"]:  # cores busy over the rate
            row(cpu_line("create (its read-after-write GETs included)",
                         {n: 1e6 * share / s["creates_per_s"] for n, share in s["cores_busy"].items()},
                         cores if k == "64" else None), "")
        lag = s["projection_lag_ms"]
        row(f"read-after-write misses during {k} clients", f"{s.get('read_after_write_misses', 0)} of {lag['samples']}",
            None, "0")
        row("  create response → GET answered 200, p50/p99 ms", f"{lag['p50']}/{lag['p99']}")
        if "relay_lag" in s:
            relay = s["relay_lag"]
            row(f"  relay: {relay['deliveries']:,} events, commit → on topic p50/p99/max ms",
                "/".join(str(relay["lag_ms"][p]) for p in ("p50", "p99", "max")), None, "p99 < 250 ms")
    w = report.get("webhooks")
    if w:
        row(f"webhooks: {w['deliveries']:,} of {w['creates']:,} bookings delivered", f"{w['creates_per_s']:,.0f}/s")
        row("  commit → receipt p50/p99/max ms", "/".join(str(w["lag_ms"][p]) for p in ("p50", "p99", "max")), None,
            "(issue 16: report)")
    h = report.get("hot_window")
    if h:
        row(f"hot-window 1,000 creates, 200 slots, median of {len(h['bursts'])} bursts (dec/s)",
            f"{h['decisions_per_s']:,.0f}", None, "≥ 2,000/s")
        row("  slowest and fastest burst (dec/s)", f"{h['min_decisions_per_s']:,.0f} / {h['max_decisions_per_s']:,.0f}")
        row("  succeeded per burst (exactly 200 each)", ", ".join(map(str, h["succeeded"])))
    runs = report.get("kafka_ingest", [])
    for k in runs:
        row(f"kafka-ingest {k['commands']:,} commands, {plots.ingest_layout(k)} (cmd/s)",
            f"{k['commands_per_s']:,.0f}", ratio(k["commands_per_s"], c.get("16")),
            "≥ 10,000/s, ratio ≥ 0.5 (vs 16 clients)")
        row("  from ingestor process start (cmd/s)", f"{k['commands_per_s_from_process_start']:,.0f}")
        if k.get("commands_per_s_steady"):
            row("  steady: from 10% to 90% of the results (cmd/s)", f"{k['commands_per_s_steady']:,.0f}")
        maintenance(k)
        row("  commands answered / answered again (counted once)",
            f"{k['results']:,} / {k.get('repeated_results', 0):,}")
        row("  answered booked (each command a new booking)", f"{k['ok']:,}")
        if k.get("cores_busy_steady"):
            row("  cores busy, steady: " + ", ".join(f"{n} {v}" for n, v in k["cores_busy_steady"].items()), "")
        if "cores_busy" in k:
            row("  cores busy from process start (its start and the group's forming included): "
                + ", ".join(f"{n} {v}" for n, v in k["cores_busy"].items()), "")
        if k.get("cpu_us_per_command"):
            row(cpu_line("command, steady", k["cpu_us_per_command"], cores), "")
    r = report.get("rebuild")
    if r:
        row(f"rebuild {r['log_events']:,} log events into all {len(r['projections'])} projections (ev/s)",
            f"{r['events_per_s']:,.0f}", None, "≥ 50,000 events/s")
        maintenance(r)
        if "cpu_us_per_event" in r:
            row(cpu_line("event", r["cpu_us_per_event"], cores), "")
    row("idle service memory (RSS MB)", str(report["idle_rss_mb"]), None, "< 150 MB")
    for title, profile in (("the service during http-spread 64", report.get("profile")),
                           ("the ingestor during kafka-ingest, 1 worker",
                            next((k["profile"] for k in runs if "profile" in k), None))):
        if profile:
            lines += ["", f"profile of {title} ({profile['samples']} samples), top own time:"]
            lines += [f"  {share:5.1f}%  {name}" for name, share in profile["own"]]
            lines += ["top inclusive:"] + [f"  {share:5.1f}%  {name}" for name, share in profile["inclusive"]]
    return "\n".join(lines)


PHASES = ("http", "webhooks", "hot", "kafka", "rebuild")
# The ceiling every ratio is taken against: pgbench running this one-row INSERT, one transaction each.
CEILING_TABLE = "CREATE TABLE bench_ceiling (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v int)"
CEILING_INSERT = "INSERT INTO bench_ceiling (v) VALUES (1)"


async def run(full: bool, profile: bool, phases: tuple[str, ...] = PHASES, kafka_commands: int | None = None,
              kafka_layouts: tuple[tuple[int, int | None], ...] = ((1, None), (2, None))) -> dict:
    seconds = 30 if full else 8
    pg_seconds = 15 if full else 5
    kafka_commands = kafka_commands or (50_000 if full else 10_000)
    rebuild_target = 200_000 if full else 60_000
    work = Path(tempfile.mkdtemp(prefix="slotledger-bench-"))
    OUT.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logs = OUT / f"service-{stamp}.log"
    report: dict = {"mode": "full" if full else "short", "started": stamp, "machine": machine()}
    log(f"starting PostgreSQL (durable) and Kafka in {work}")
    pg = LocalPostgres(work / "postgres", durable=True).start()
    kafka = LocalKafka(work / "kafka").start()
    service = None
    try:
        settings = Settings(database_url=pg.url, kafka_bootstrap=kafka.bootstrap, topic_prefix="bench",
                            http_port=free_port(), state_dir=work)
        clinic = await set_up_clinic(settings)
        url = f"http://127.0.0.1:{settings.http_port}"
        service = spawn("gateway,projectors,relay", settings, logs)
        wait_ready(url)
        await asyncio.sleep(3)
        report["idle_rss_mb"] = rss_mb(service.pid)

        script = work / "insert.sql"
        script.write_text(CEILING_INSERT + ";\n")
        conn = await asyncpg.connect(pg.url)
        await conn.execute(CEILING_TABLE)
        await conn.close()
        report["ceiling_pgbench_tps"] = {}
        for clients in (1, 16, 64):
            report["ceiling_pgbench_tps"][str(clients)] = pgbench(pg.port, clients, pg_seconds, script)
            log(f"pgbench {clients} clients: {report['ceiling_pgbench_tps'][str(clients)]:,.0f} tps")

        report["http_spread"] = []
        for workers in ((1, 2) if "http" in phases else ()):
            if workers > 1:  # the same components, now on two processes sharing the port
                stop(service)
                service = spawn("gateway,projectors,relay", settings, logs, workers)
                wait_ready(url, workers)
            for clients in (4, 16, 64):
                raw = OUT / f"profile-{stamp}.txt"
                spy = profile_start(service.pid, seconds, raw) if profile and clients == 64 and workers == 1 else None
                # The relay's lag (commit → on the events topic) under the heaviest load, with the relay in the
                # service process as deployed.
                relay = RelayLagReader(kafka.bootstrap, settings.topic("events")).start() \
                    if clients == 64 and workers == 1 else None
                result = spread_load(url, clinic, clients, seconds, (service.pid, pg.process.pid, kafka.process.pid),
                                     "--lag-every", "50")
                result["workers"] = workers
                if relay is not None:
                    result["relay_lag"] = relay.stop()
                report["http_spread"].append(result)
                log(f"http-spread {clients} clients, {workers} worker(s): {result['creates_per_s']:,.0f} creates/s, "
                    f"p99 {result['latency_ms']['p99']} ms")
                if spy is not None:
                    spy.wait(60)
                    if raw.exists():
                        report["profile"] = profile_top(raw)
                        report["profile"]["raw"] = str(raw)
        if "http" in phases:  # back to one process for the rest
            stop(service)
            service = spawn("gateway,projectors,relay", settings, logs)
            wait_ready(url)

        if "webhooks" in phases:
            report["webhooks"] = await webhook_lag(settings, clinic, url, seconds, logs)
            log(f"webhooks: {report['webhooks']}")
        if "hot" in phases:
            report["hot_window"] = hot_window(clinic, url)
            log(f"hot-window: {report['hot_window']}")
        report["kafka_ingest"] = []
        for run_number, (workers, consumers) in enumerate(kafka_layouts if "kafka" in phases else (), start=1):
            report["kafka_ingest"].append(await kafka_ingest(
                settings, clinic, kafka_commands, logs, OUT / f"profile-ingestor-{stamp}.txt" if profile else None,
                (pg.process.pid, kafka.process.pid, service.pid), workers, consumers, run_number))
            log(f"kafka-ingest, {workers} worker(s): {report['kafka_ingest'][-1]}")
        stop(service)
        service = None
        if "rebuild" in phases:
            log(f"filling the log to {rebuild_target:,} events for the rebuild")
            await fill_log(settings, clinic, rebuild_target)
            report["rebuild"] = await time_rebuild(settings, pg.process.pid)
            log(f"rebuild: {report['rebuild']}")
    finally:
        if service is not None:
            stop(service)
        kafka.stop()
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)

    c = report["ceiling_pgbench_tps"]
    report["ratios"] = {
        **{f"http_spread_{s['clients']}_workers_{s['workers']}": ratio(s["creates_per_s"], c.get(str(s["clients"])))
           for s in report["http_spread"]},
        **{f"kafka_ingest_workers_{kafka_layout(k)}_vs_16": ratio(k["commands_per_s"], c.get("16"))
           for k in report["kafka_ingest"]},
    }
    text = table(report)
    (OUT / f"report-{stamp}.json").write_text(json.dumps(report, indent=2))
    (OUT / f"report-{stamp}.txt").write_text(text + "\n")
    print(text)
    print(f"\nreport: {OUT / f'report-{stamp}.json'}")
    for png in plots.draw(report, OUT / f"report-{stamp}"):
        print(f"plot: {png}")
    return report


def parse_layout(text: str) -> tuple[int, int | None]:
    """`2` → (2, None), `4x2` → (4, 2); anything else is a ValueError."""
    workers, _, consumers = text.partition("x")
    return int(workers), int(consumers) if consumers else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="the full run: longer phases, 50,000 Kafka commands, "
                        "200,000 events rebuilt")
    parser.add_argument("--profile", action="store_true", help="py-spy the service during http-spread 64 and the "
                        "ingestor during kafka-ingest")
    parser.add_argument("--phases", default=",".join(PHASES), help="a comma-separated subset of " + ",".join(PHASES))
    parser.add_argument("--kafka-commands", type=int, help="how many commands kafka-ingest publishes")
    parser.add_argument("--kafka-layouts", nargs="+", default=["1", "2"], metavar="N[xC]",
                        help="ingestor layouts kafka-ingest runs, in turn: N workers (`serve --workers N`), each "
                        "with C consumers (SLOTLEDGER_INGEST_CONSUMERS; unset: its default)")
    args = parser.parse_args()
    phases = tuple(p for p in args.phases.split(",") if p)
    unknown = set(phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    try:
        layouts = tuple(map(parse_layout, args.kafka_layouts))
    except ValueError:
        parser.error("--kafka-layouts: each is N or NxC, e.g. 2 or 4x2")
    asyncio.run(run(args.full, args.profile, phases, args.kafka_commands, layouts))


if __name__ == "__main__":
    main()
