"""The one place that wires the service together: pool, event store, handler, projectors, gateway."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import asyncpg
from aiohttp import web
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import Gauge

from services.aio import cancel_all
from services.handler import CommandHandler
from services.ingestor import Ingestor
from services.gateway.guard import FailedAuthLimiter
from services.keys import KeyRing
from services.logs import log
from services.loops import LOOPS, health
from services.gateway import protocol
from services.gateway.app import build_app
from services.projector import ProjectorRunner, rebuild_after_migrations
from services.relay import Relay
from services.routing import Desk, Router
from services.settings import Settings
from services.sweeper import HoldSweeper
from services.dispatcher import Dispatcher
from services.webhooks import Subscriptions, Vault
from services.store.eventstore import EventStore
from services.store.waker import LogWaker
from services.store.pool import create_pool
from services.store.migrate import migrate

COMPONENTS = ("gateway", "projectors", "ingestor", "relay", "sweeper", "webhooks")
INGEST_LAG = Gauge("slotledger_ingestor_lag_messages", "Commands on the broker not yet taken (at the last /readyz)")
RELAY_LAG = Gauge("slotledger_relay_lag_events", "Events in the log not yet on the events topic (at the last /readyz)")


async def ensure_topics(admin: AIOKafkaAdminClient, settings: Settings) -> None:
    """Create the service's topics when the cluster lacks them (clusters that forbid this provision them)."""
    from aiokafka.admin import NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    from services.local.stack import TOPICS

    existing = set(await admin.list_topics())
    missing = [settings.topic(name) for name in TOPICS if settings.topic(name) not in existing]
    if not missing:
        return
    try:
        await admin.create_topics([NewTopic(t, settings.topic_partitions, settings.topic_replication)
                                   for t in missing])
    except TopicAlreadyExistsError:
        pass


async def coordinator_known(admin: AIOKafkaAdminClient, group: str, seconds: float = 5.0) -> None:
    """Wait, for at most `seconds`, until the broker names `group`'s coordinator and has it loaded. A broker that
    has just started (as `slotledger up` starts one) loads its offsets topic for a moment, creating it first on
    the first such question if the broker is new; consumers started meanwhile each logged "Group Coordinator
    Request failed" errors (harmless: they retry), a screenful on every start. It takes ~0.2 s there; past
    `seconds` (the gateway starts after the broker's parts, so this is bounded short) the consumers start anyway
    and retry by themselves."""
    from aiokafka.errors import KafkaConnectionError, KafkaError

    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        try:
            response, = await admin.describe_consumer_groups([group])
            if all(described[0] == 0 for described in response.groups):  # its error code (14: still loading)
                return
        except KafkaConnectionError:
            raise  # no broker: the part's start fails and is tried again
        except KafkaError:  # not available yet
            pass
        if asyncio.get_running_loop().time() > deadline:
            return
        await asyncio.sleep(0.1)


READINESS_SECONDS = 4.5  # /readyz answers within this, whatever is stalled
KAFKA_FIRST_TRY_SECONDS = 15.0  # the broker's parts at start, before the service goes on without them


async def _started(starting: Awaitable[Any], undo: Callable[[], Awaitable[Any]]) -> None:
    """Await a part's start; if it fails or is cancelled, close what it opened before passing the error on."""
    try:
        await starting
    except BaseException:
        try:
            await undo()
        except Exception as exc:
            log.warning("closing a part whose start failed failed too", error=repr(exc)[:300])
        raise


async def _start_all(ingestors: list[Ingestor]) -> None:
    """Every one started, or none left starting: one failing cancels the others' starts (gather would not)."""
    async with asyncio.TaskGroup() as group:
        for ingestor in ingestors:
            group.create_task(ingestor.start())


async def _measure_lag(checks: dict, loop: str, key: str, gauge: Gauge, measure) -> None:
    """A loop's lag into its readiness entry and its gauge; readiness reports, never raises."""
    entry = checks.setdefault(f"loop:{loop}", {"ok": True})
    try:
        entry[key] = await measure()
        gauge.set(entry[key])
    except Exception as exc:
        entry[f"{key}_error"] = repr(exc)[:200]


@dataclass
class Runtime:
    settings: Settings
    components: tuple[str, ...] = COMPONENTS
    pool: asyncpg.Pool | None = None
    store: EventStore | None = None
    waker: LogWaker | None = None
    handler: CommandHandler | None = None
    keys: KeyRing | None = None
    auth_limiter: FailedAuthLimiter | None = None
    projectors: ProjectorRunner | None = None
    kafka_admin: AIOKafkaAdminClient | None = None
    ingestors: list[Ingestor] = field(default_factory=list)
    relay: Relay | None = None
    sweeper: HoldSweeper | None = None
    webhooks: Subscriptions | None = None
    dispatcher: Dispatcher | None = None
    http_url: str | None = None
    desk: Desk | None = None  # with several workers: where the others hand over creates for dates owned here
    _runner: web.AppRunner | None = None
    _tasks: list[asyncio.Task] = field(default_factory=list)
    _kafka_connecting: asyncio.Task | None = None  # started without the broker: its parts, tried again and again
    _on_stop: list = field(default_factory=list)

    async def start(self) -> None:
        s = self.settings
        LOOPS.clear()  # one service per process: its loops report afresh
        conn = await asyncpg.connect(s.database_url)
        try:
            applied = await migrate(conn, s.database_schema)
        finally:
            await conn.close()
        if applied:
            log.info("migrated", applied=applied)
        self.pool = await create_pool(s.database_url, s.database_schema, s.pool_min_size, s.pool_max_size,
                                      s.connect_timeout_seconds, s.statement_timeout_seconds, s.acquire_timeout_seconds)
        self.store = EventStore(self.pool, s.database_schema)
        await rebuild_after_migrations(self.pool, self.store, applied)
        self.waker = LogWaker(self.store, s.database_url)
        await self.waker.start()
        self.handler = CommandHandler(self.pool, self.store, retries=s.command_retries)
        self.keys = KeyRing(self.pool)
        self.auth_limiter = FailedAuthLimiter(s.auth_failures_per_minute)
        self.projectors = ProjectorRunner(self.pool, self.store, self.waker, s.poll_interval_seconds)
        if "projectors" in self.components:
            self._tasks.extend(self.projectors.tasks())
        self.webhooks = Subscriptions(self.pool, Vault(self.pool, s.webhook_secrets_key), s.webhooks_allow_private)
        if "webhooks" in self.components:
            self.dispatcher = Dispatcher(s, self.pool, self.store, self.waker, self.webhooks)
            await self.dispatcher.start()
        self.sweeper = HoldSweeper(self.pool, self.handler, s.sweep_interval_seconds)
        if "sweeper" in self.components:
            self._tasks.append(asyncio.create_task(self.sweeper.run(), name="sweeper"))
        kafka_parts = self._broker_parts
        if kafka_parts and not s.kafka_bootstrap:
            raise RuntimeError(f"{', '.join(sorted(kafka_parts))} need SLOTLEDGER_KAFKA_BOOTSTRAP")
        if s.kafka_bootstrap and ("gateway" in self.components or kafka_parts):
            try:
                await asyncio.wait_for(self._start_kafka_parts(), KAFKA_FIRST_TRY_SECONDS)
            except Exception as exc:  # the broker is down or unreachable: everything else starts without it
                self._kafka_connecting = asyncio.create_task(self._keep_connecting(exc), name="kafka-connect")
        if "gateway" in self.components and s.workers > 1:
            # Listening before the gateway is: a create handed here finds the owner as soon as it could be sent.
            self.handler.router = Router(s.http_port, s.worker, s.workers)
            self.desk = Desk(self.handler, s.http_port, s.worker)
            await self.desk.start()
        if "gateway" in self.components:
            self._runner = protocol.runner(build_app(self), s.head_timeout_seconds, s.max_connections)
            await self._runner.setup()
            site = web.TCPSite(self._runner, s.http_host, s.http_port, reuse_port=s.http_reuse_port or None)
            await site.start()
            port = self._runner.addresses[0][1]
            self.http_url = f"http://{s.http_host}:{port}"
            log.info("gateway listening", url=self.http_url, worker=s.worker)

    async def readiness(self) -> dict:
        """Each dependency and loop, checked at once and within READINESS_SECONDS however many are stalled
        (an orchestrator's probe times out; it must hear "not ready", not nothing)."""
        checks: dict[str, dict] = {}
        deadline = asyncio.get_running_loop().time() + READINESS_SECONDS

        async def postgres() -> None:
            try:
                async with self.pool.acquire(timeout=2) as conn:
                    await conn.fetchval("SELECT 1", timeout=2)
                checks["postgres"] = {"ok": True}
            except Exception as exc:  # readiness reports, never raises
                checks["postgres"] = {"ok": False, "error": repr(exc)[:300]}

        async def kafka() -> None:
            if self.kafka_admin is None:
                # required only by the parts that use it: a gateway alone is ready without a broker
                error = ("not connected to the broker yet" if self.settings.kafka_bootstrap
                         else "no Kafka bootstrap configured")
                checks["kafka"] = {"ok": False, "error": error,
                                   "required": bool(self._broker_parts)}
                return
            try:
                cluster = await asyncio.wait_for(self.kafka_admin.describe_cluster(), 3)
                checks["kafka"] = {"ok": True, "brokers": len(cluster.get("brokers", []))}
            except Exception as exc:
                checks["kafka"] = {"ok": False, "error": str(exc) or type(exc).__name__}

        await asyncio.gather(postgres(), kafka())
        for name, loop in LOOPS.items():  # each background loop: failing now, and how long since it last worked
            checks[f"loop:{name}"] = loop.state()

        def left() -> float:
            return max(0.2, deadline - asyncio.get_running_loop().time())

        if self.ingestors:
            async def lag() -> int:
                return sum(await asyncio.gather(*(ingestor.lag() for ingestor in self.ingestors)))

            await _measure_lag(checks, "ingestor", "lag_messages", INGEST_LAG, lambda: asyncio.wait_for(lag(), left()))
        if self.relay is not None and checks["postgres"]["ok"]:
            await _measure_lag(checks, "relay", "lag_events", RELAY_LAG,
                               lambda: asyncio.wait_for(self.relay.lag(), left()))
        return checks

    @property
    def _broker_parts(self) -> set[str]:
        """This process's components that need the broker to run at all."""
        return {"ingestor", "relay"} & set(self.components)

    async def _start_kafka_parts(self) -> None:
        """The broker's parts not started yet: the admin client, the topics, the relay, the ingestor. A part whose
        start fails (or is cut short) is closed again, so the next try begins it afresh."""
        s = self.settings
        if self.kafka_admin is None:
            admin = AIOKafkaAdminClient(bootstrap_servers=s.kafka_bootstrap, request_timeout_ms=5000)
            await _started(admin.start(), admin.close)
            self.kafka_admin = admin
        if self._broker_parts:
            await ensure_topics(self.kafka_admin, s)  # creates only what is missing: a retry may run it again
        if "relay" in self.components and self.relay is None:
            relay = Relay(s, self.pool, self.store, self.waker)
            await _started(relay.start(), relay.stop)
            self.relay = relay
        if "ingestor" in self.components and not self.ingestors:
            await coordinator_known(self.kafka_admin, s.topic("ingestor"))
            # Several consumers in the group, each with its own partitions (so each routing key's order holds):
            # while one waits on PostgreSQL or the broker, another decides.
            ingestors = [Ingestor(s, self.pool, self.handler, lane) for lane in range(s.ingest_consumers)]
            await _started(_start_all(ingestors), lambda: asyncio.gather(*(i.stop() for i in ingestors)))
            self.ingestors = ingestors

    async def _keep_connecting(self, failure: Exception) -> None:
        """Started without the broker: the gateway, the projectors and the rest run as they do when the broker
        goes down later (HTTP books into PostgreSQL; the relay publishes all of it once it starts). The broker's
        parts are tried again, with the loops' backoff, until all have started; /readyz shows `loop:kafka-connect`
        failing meanwhile."""
        loop = health("kafka-connect")
        while True:
            await loop.failed(failure)
            try:
                await self._start_kafka_parts()
            except Exception as exc:
                failure = exc
                continue
            loop.ok()
            return

    def on_stop(self, callback) -> None:
        self._on_stop.append(callback)

    async def stop(self) -> None:
        for callback in self._on_stop:
            callback()
        if self._kafka_connecting is not None:  # first: a part it is starting is closed by it, not left running
            await cancel_all([self._kafka_connecting])
        # first: each finishes and commits the batch in hand
        await asyncio.gather(*(ingestor.stop() for ingestor in self.ingestors))
        if self.relay is not None:
            await self.relay.stop()
        if self.dispatcher is not None:
            await self.dispatcher.stop()
        await cancel_all(self._tasks)
        if self._runner is not None:
            await self._runner.cleanup()
        if self.desk is not None:  # after the gateway: its creates in hand may be waiting on another worker's desk
            await self.desk.stop()
            await self.handler.router.close()
        if self.kafka_admin is not None:
            await self.kafka_admin.close()
        if self.handler is not None:  # nothing decides any more: what the caches learnt is kept for the next start
            await self.handler.uow.close()
        if self.waker is not None:
            await self.waker.stop()
        if self.pool is not None:
            await self.pool.close()
