"""The Kafka ingestor: commands from <prefix>.commands through the same command code as HTTP, one result per
command on <prefix>.command-results, anything unreadable to <prefix>.commands.dlq.

A fetched batch is decided in order, its appointment commands set-wise (services/bulk.py: each window-day
loaded once, everything decided committed in one statement), so each routing key's commands keep their order;
results and dead letters are produced and acknowledged before the batch's offsets are committed. That happens
while the next batch is decided, whose answers go out only once the previous batch's offsets are committed.
A command's effect and its result commit in one transaction (`command_results`), so a redelivery after a
crash or a rebalance, or a republished command_id, gets the same result and no second effect.
"""
from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from prometheus_client import Counter
from pydantic import ValidationError

from domain.errors import DomainError
from schemas.kafka import COMMAND, COMMAND_TYPES, CommandResult
from schemas.text import BadInput, check_decoded
from services import commands
from services import command_results
from services.command_results import CommandAlreadyApplied
from services.aio import stop_consumer
from services.bulk import BulkDecider, Decided
from services.handler import CommandHandler
from services.outcome import Meta
from services.produce import produce
from services.logs import log
from services.loops import health
from services.store.pool import DATABASE_UNAVAILABLE
from services.settings import Settings

COMMANDS = Counter("slotledger_kafka_commands_total", "Kafka commands by result", ["type", "ok"])
DEAD_LETTERS = Counter("slotledger_kafka_dead_letters_total", "Kafka messages dead-lettered", ["reason"])

@dataclass
class DeadLetter:
    reason: str
    error: str
    command_id: str | None = None


@dataclass
class _Item:
    """One message of a batch and what became of it."""
    record: ConsumerRecord
    command: Any = None
    dead: DeadLetter | None = None
    result: dict[str, Any] | None = None
    stored: bool = False  # the result is already in command_results


def decode(value: bytes | None) -> Any | DeadLetter:
    """The message's command, or why it is a dead letter."""
    if value is None:
        return DeadLetter("schema_invalid", "the message has no value (a tombstone)")
    try:  # the usual message, at a quarter of json's cost; what orjson refuses is told apart below
        raw, text = orjson.loads(value), value
    except orjson.JSONDecodeError:
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            return DeadLetter("undecodable", f"the value is not UTF-8: {exc}")
        try:
            raw = json.loads(text)
        except (ValueError, RecursionError) as exc:
            return DeadLetter("invalid_json", f"the value is not JSON: {exc!r}"[:500])
    if not isinstance(raw, dict):
        return DeadLetter("schema_invalid", "the value must be a JSON object", _command_id(raw))
    try:  # the same rules as HTTP bodies: no NUL, no lone surrogate, no deep nesting
        check_decoded(text, raw, "value")
    except BadInput as exc:
        return DeadLetter("schema_invalid", str(exc), _command_id(raw))
    if "type" in raw and raw["type"] not in COMMAND_TYPES:
        return DeadLetter("unknown_command_type", f"unknown command type {raw['type']!r}; known: "
                          + ", ".join(COMMAND_TYPES), _command_id(raw))
    try:
        return COMMAND.validate_python(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors())
        return DeadLetter("schema_invalid", problems, _command_id(raw))


def _command_id(raw: Any) -> str | None:
    try:
        return str(uuid.UUID(str(raw["command_id"])))
    except (TypeError, KeyError, ValueError, AttributeError):
        return None


@dataclass
class Ingestor:
    settings: Settings
    pool: asyncpg.Pool
    handler: CommandHandler
    lane: int = 0  # which of the process's consumers (settings.ingest_consumers)
    _consumer: AIOKafkaConsumer | None = None
    _producer: AIOKafkaProducer | None = None
    _batch_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _stopping: bool = False
    _task: asyncio.Task | None = None
    _in_flight: tuple[dict, asyncio.Task] | None = None  # a decided batch whose answers are going out
    bulk: BulkDecider = field(init=False)

    def __post_init__(self) -> None:
        self.bulk = BulkDecider(self.handler)

    @property
    def topic(self) -> str:
        return self.settings.topic("commands")

    async def start(self) -> None:
        s = self.settings
        self._producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap, enable_idempotence=True,
                                          acks="all", linger_ms=0, max_batch_size=1_000_000)
        await self._producer.start()
        # A consumer learns that the group is rebalancing (another consumer joined or left) from its next
        # heartbeat: every 500 ms rather than aiokafka's 3 s, which stalled the whole group that long each time.
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap, group_id=s.topic("ingestor"), enable_auto_commit=False,
            auto_offset_reset="earliest", max_poll_records=s.ingest_max_batch, isolation_level="read_committed",
            heartbeat_interval_ms=500)
        # Subscribed once started, so that joining the group happens in the background: aiokafka's start() on a
        # subscribed consumer waits for its first assignment, and a group forming from scratch waits out the
        # broker's initial rebalance delay (3 s by default, 6 s when the consumers join together), which kept
        # the whole service, its HTTP gateway included, from starting that long. Until its partitions come,
        # the loop's fetches return nothing.
        await self._consumer.start()
        self._consumer.subscribe([self.topic], listener=_FinishBatchFirst(self))
        self._task = asyncio.create_task(self._run(), name=self.name)

    @property
    def name(self) -> str:
        return "ingestor" if self.lane == 0 else f"ingestor-{self.lane}"

    async def _run(self) -> None:
        loop = health(self.name)
        while not self._stopping:
            try:
                batches = await self._consumer.getmany(timeout_ms=200, max_records=self.settings.ingest_max_batch)
            except Exception as exc:  # the client reconnects by itself; keep asking
                await loop.failed(exc)
                continue
            if not batches:
                if self._in_flight is not None and self._in_flight[1].done():  # a failure is seen while idle too
                    async with self._batch_lock:
                        await self._flush(loop)
                else:
                    loop.ok()
                continue
            async with self._batch_lock:
                try:
                    items = await self._decide_batch([r for records in batches.values() for r in records])
                except Exception as exc:  # the batch is redelivered: its effects are recorded, so none repeats
                    self._rewind(batches)
                    await loop.failed(exc)
                    continue
                # The previous batch's answers went out while this one was decided; only once they are
                # acknowledged and its offsets committed may this one's follow.
                if not await self._flush(loop, batches):
                    continue
                self._in_flight = (batches, asyncio.create_task(self._answer(items, batches)))
        async with self._batch_lock:
            await self._flush(loop)

    async def _answer(self, items: list[_Item], batches: dict) -> None:
        await self._publish(items)
        await self._consumer.commit({tp: records[-1].offset + 1 for tp, records in batches.items()})

    async def _flush(self, loop, decided_since: dict | None = None) -> bool:
        """Wait for the batch whose answers are going out; if they failed, rewind to it, and to the batch
        `decided_since` on partitions that one alone read (both are redelivered: every effect is recorded,
        so none repeats)."""
        if self._in_flight is None:
            return True
        batches, answering = self._in_flight
        self._in_flight = None
        try:
            await answering
        except Exception as exc:
            self._rewind(batches, decided_since or {})
            await loop.failed(exc)
            return False
        loop.ok()
        return True

    def _rewind(self, *batch_sets: dict) -> None:
        """Seek each partition back to the earliest offset any of these batches read from it."""
        earliest: dict[TopicPartition, int] = {}
        for batches in batch_sets:
            for tp, records in batches.items():
                earliest[tp] = min(earliest.get(tp, records[0].offset), records[0].offset)
        for tp, offset in earliest.items():
            if tp in self._consumer.assignment():
                self._consumer.seek(tp, offset)

    async def lag(self) -> int:
        """Commands on the broker not yet taken, over this consumer's partitions (as of its last fetch)."""
        total = 0
        for tp in self._consumer.assignment():
            high = self._consumer.highwater(tp)
            if high is not None:
                total += max(0, high - await asyncio.wait_for(self._consumer.position(tp), 1))
        return total

    async def stop(self) -> None:
        """Finish the batch in hand (its results are produced and its offsets committed), then leave the group."""
        self._stopping = True
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 30)
            except asyncio.TimeoutError:
                log.warning("the ingestor did not finish its batch in 30 s; its commands will be redelivered")
        if self._consumer is not None:
            await stop_consumer(self._consumer)
        if self._producer is not None:
            await self._producer.stop()

    # -- one batch ---------------------------------------------------------------------------------------
    async def _decide_batch(self, records: list[ConsumerRecord]) -> list[_Item]:
        """Every message of the batch decided and its result stored (not yet produced)."""
        items = [_Item(record) for record in records]
        for item in items:
            decoded = decode(item.record.value)
            if isinstance(decoded, DeadLetter):
                item.dead = decoded
                if decoded.command_id:  # the producer is waiting for this command_id: tell it, too
                    item.result = CommandResult.refused(decoded.command_id, 400, "VALIDATION_ERROR",
                                                        f"the command was dead-lettered ({decoded.reason})",
                                                        {"reason": decoded.reason, "error": decoded.error}).as_json()
            else:
                item.command = decoded
        await self._recall(items)
        await self._decide(items)
        await self._store_results(items)
        return items

    async def _recall(self, items: list[_Item]) -> None:
        """Commands already processed (redelivered or republished) get their stored result again."""
        ids = [item.command.command_id for item in items if item.command is not None]
        if not ids:
            return
        async with self.pool.acquire() as conn:
            known = await command_results.recall(conn, ids)
        for item in items:
            if item.command is not None and item.command.command_id in known:
                item.result, item.stored = known[item.command.command_id], True

    async def _decide(self, items: list[_Item]) -> None:
        """Appointment commands set-wise (services/bulk.py), anything else one by one, all in batch order (so
        in partition order, which keeps each routing key's order). A command_id repeated in the batch is
        decided once; its copies get the first's result."""
        firsts: dict[uuid.UUID, _Item] = {}
        todo = []
        for item in items:
            if item.command is not None and item.result is None:
                if firsts.setdefault(item.command.command_id, item) is item:
                    todo.append(item)
        await self.bulk.run(todo, self._execute, self._settle)
        for item in items:
            if item.command is not None and item.result is None:
                first = firsts[item.command.command_id]
                item.result, item.stored = first.result, True

    def _settle(self, item: _Item, decided: Decided) -> None:
        command_id = str(item.command.command_id)
        if decided.refusal is not None:
            exc = decided.refusal
            item.result = CommandResult.refused(command_id, exc.status, exc.code, exc.message, exc.details,
                                                exc.extra).as_json()
        else:
            outcome = decided.outcome
            item.result = CommandResult.ok_body(command_id, outcome.status, outcome.data, outcome.position,
                                                outcome.idempotent)
            item.stored = outcome.position is not None  # recorded with its events
        COMMANDS.labels(item.command.type, str(item.result["ok"]).lower()).inc()

    async def _execute(self, item: _Item) -> None:
        command = item.command
        command_id = str(command.command_id)
        meta = Meta(command_id=command_id, actor="kafka")
        with structlog.contextvars.bound_contextvars(command_id=command_id, command_type=command.type):
            try:
                outcome = await commands.execute(self.handler, command, meta)
                item.result = CommandResult.ok_body(command_id, outcome.status, outcome.data, outcome.position,
                                                    outcome.idempotent)
                item.stored = outcome.position is not None  # recorded with its events
            except DomainError as exc:
                item.result = CommandResult.refused(command_id, exc.status, exc.code, exc.message, exc.details,
                                                    exc.extra).as_json()
            except CommandAlreadyApplied:
                async with self.pool.acquire() as conn:
                    item.result = await command_results.stored(conn, command.command_id)
                item.stored = True
            except DATABASE_UNAVAILABLE:  # the batch is retried from its first offset, nothing dead-lettered
                raise
            except Exception as exc:  # a bug must not stop the stream: this command is set aside, loudly
                log.exception("command failed unexpectedly; dead-lettering it")
                item.dead = DeadLetter("processing_failed", repr(exc), command_id)
                item.result = CommandResult.refused(command_id, 500, "INTERNAL_ERROR", "the command could not be "
                                                    "processed; it has been logged and dead-lettered").as_json()
                item.stored = True  # not remembered: a retry after a fix may succeed
        COMMANDS.labels(command.type, str(item.result["ok"]).lower()).inc()

    async def _store_results(self, items: list[_Item]) -> None:
        """Results without an effect (refusals, idempotent replays) are remembered too, so a republished command
        is answered the same way even if the world changed meanwhile. If another delivery stored one first,
        that one is the answer."""
        fresh = [i for i in items if i.command is not None and i.result is not None and not i.stored]
        if not fresh:
            return
        async with self.pool.acquire() as conn:
            answers = await command_results.store_without_effect(
                conn, [(i.command.command_id, i.command.org_id, i.result) for i in fresh])
        for item in fresh:
            item.result = answers.get(item.command.command_id, item.result)

    async def _publish(self, items: list[_Item]) -> None:
        """Dead letters and results, acknowledged by the broker before the offsets move."""
        s = self.settings
        dead, results = [], []
        for item in items:
            record = item.record
            if item.dead is not None:
                DEAD_LETTERS.labels(item.dead.reason).inc()
                log.warning("dead letter", reason=item.dead.reason, error=item.dead.error, partition=record.partition,
                            offset=record.offset)
                headers = list(record.headers or ()) + [
                    ("dlq.reason", item.dead.reason.encode()), ("dlq.error", item.dead.error[:4000].encode()),
                    ("dlq.topic", record.topic.encode()), ("dlq.partition", str(record.partition).encode()),
                    ("dlq.offset", str(record.offset).encode())]
                if item.dead.command_id:
                    headers.append(("dlq.command_id", item.dead.command_id.encode()))
                dead.append((record.key, record.value, headers))
            if item.result is not None:
                results.append((str(item.result["command_id"]).encode(), orjson.dumps(item.result), []))
        await asyncio.gather(*(produce(self._producer, s.topic(topic), messages) for topic, messages in
                               (("commands.dlq", dead), ("command-results", results)) if messages))


class _FinishBatchFirst(ConsumerRebalanceListener):
    """Partitions are given up only between batches, once the batch in hand is answered and committed by its
    owner."""

    def __init__(self, ingestor: Ingestor):
        self.ingestor = ingestor

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self.ingestor._batch_lock:
            await self.ingestor._flush(health(self.ingestor.name))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        pass
