import asyncio
import uuid

import asyncpg
import pytest

from services.store.eventstore import (
    START, Append, ConcurrencyError, EventStore, NewEvent, load_checkpoint, save_checkpoint,
)
from services.store.waker import LogWaker, wait_flag


def ev(n: int = 0) -> NewEvent:
    return NewEvent(type="thing.happened", data={"n": n})


async def test_append_and_read_stream(store):
    stored = await store.append([Append("s-1", 0, [ev(1), ev(2)])])
    assert [e.stream_version for e in stored] == [1, 2]
    assert stored[0].position < stored[1].position
    await store.append([Append("s-1", 2, [ev(3)])])
    events = await store.read_stream("s-1")
    assert [e.data["n"] for e in events] == [1, 2, 3]
    assert [e.stream_version for e in events] == [1, 2, 3]
    assert await store.stream_version("s-1") == 3
    assert [e.data["n"] for e in await store.read_stream("s-1", after_version=2)] == [3]


async def test_event_ids_are_time_ordered_so_the_unique_index_grows_at_its_end(store):
    first = await store.append([Append("ids-1", 0, [ev(1), ev(2)])])
    second = await store.append([Append("ids-2", 0, [ev(3)]), Append("ids-1", 2, [ev(4)])])
    stored = first + second
    assert {e.event_id.version for e in stored} == {7}
    assert sorted(stored, key=lambda e: e.event_id) == sorted(stored, key=lambda e: e.position)
    async with store.pool.acquire() as conn:
        logged = await conn.fetch("SELECT event_id FROM events WHERE stream_id IN ('ids-1', 'ids-2')"
                                  " ORDER BY global_position")
    assert [r["event_id"] for r in logged] == sorted(e.event_id for e in stored)


async def test_concurrent_appends_to_one_stream_exactly_one_wins_per_version(store):
    await store.append([Append("hot", 0, [ev(0)])])

    async def attempt(i: int):
        try:
            return await store.append([Append("hot", 1, [ev(i)])])
        except ConcurrencyError as exc:
            return exc

    results = await asyncio.gather(*(attempt(i) for i in range(30)))
    winners = [r for r in results if not isinstance(r, ConcurrencyError)]
    losers = [r for r in results if isinstance(r, ConcurrencyError)]
    assert len(winners) == 1 and len(losers) == 29
    assert all(loser.stream_ids == ["hot"] for loser in losers)
    events = await store.read_stream("hot")
    assert [e.stream_version for e in events] == [1, 2]
    assert events[1].data == winners[0][0].data


async def test_concurrent_creation_of_a_new_stream_has_one_winner(store):
    async def attempt(i: int):
        try:
            await store.append([Append("fresh", 0, [ev(i)])])
            return True
        except ConcurrencyError:
            return False

    results = await asyncio.gather(*(attempt(i) for i in range(20)))
    assert results.count(True) == 1
    assert len(await store.read_stream("fresh")) == 1


async def test_a_wrong_expected_version_on_the_second_stream_appends_nothing_anywhere(store):
    await store.append([Append("a", 0, [ev(1)]), Append("b", 0, [ev(1)])])
    with pytest.raises(ConcurrencyError) as raised:
        await store.append([Append("a", 1, [ev(2)]), Append("b", 5, [ev(2)])])
    assert raised.value.stream_id == "b"
    assert [e.data["n"] for e in await store.read_stream("a")] == [1]
    assert [e.data["n"] for e in await store.read_stream("b")] == [1]
    assert await store.stream_version("a") == 1
    assert len(await store.read_log(START)) == 2


@pytest.mark.parametrize("how", ["own connection", "caller's transaction"])
async def test_a_stale_stream_undoes_the_claims_of_a_multi_stream_append_on_a_callers_connection(store, pool, how):
    """Outside a transaction the statement itself fails (what it claimed is undone with it); inside the caller's
    transaction it inserts nothing and the caller rolls back. Either way: a ConcurrencyError naming the stale
    stream, nothing appended, and the connection still usable; the very same events again are a no-op."""
    await store.append([Append("p", 0, [ev(1)]), Append("q", 0, [ev(1)])])
    async with pool.acquire() as conn:
        with pytest.raises(ConcurrencyError) as raised:
            if how == "own connection":
                await store.append([Append("p", 1, [ev(2)]), Append("q", 4, [ev(2)])], conn)
            else:
                async with conn.transaction():
                    await store.append([Append("p", 1, [ev(2)]), Append("q", 4, [ev(2)])], conn)
        assert raised.value.stream_ids == ["q"]
        assert await conn.fetchval("SELECT 1") == 1
        assert await store.stream_version("p") == await store.stream_version("q") == 1
        events = [ev(2), ev(3)]
        stored = await store.append([Append("p", 1, events[:1]), Append("q", 1, events[1:])], conn)
        again = await store.append([Append("p", 1, events[:1]), Append("q", 1, events[1:])], conn)
    assert [e.position for e in again] == [e.position for e in stored]
    assert len(await store.read_log(START)) == 4


async def test_an_expected_version_ahead_of_the_stream_is_a_conflict_not_a_gap(store):
    await store.append([Append("g", 0, [ev(1)])])
    with pytest.raises(ConcurrencyError):
        await store.append([Append("g", 3, [ev(2)])])
    with pytest.raises(ConcurrencyError):
        await store.append([Append("never-written", 2, [ev(2)])])


async def test_appending_the_same_event_ids_again_is_a_no_op(store):
    first = [ev(1), ev(2)]
    stored = await store.append([Append("idem", 0, first)])
    again = await store.append([Append("idem", 0, first)])
    assert [e.event_id for e in again] == [e.event_id for e in stored]
    assert [e.position for e in again] == [e.position for e in stored]
    assert len(await store.read_stream("idem")) == 2
    # Same ids into another stream are not a replay.
    with pytest.raises(ConcurrencyError):
        await store.append([Append("other", 1, first)])


async def test_gap_safe_reader_holds_back_events_behind_a_running_transaction(store, pool):
    """A takes an earlier position, B a later one and commits first: the reader waits for A."""
    before = await store.append([Append("x", 0, [ev(0)])])
    conn_a = await pool.acquire()
    tx_a = conn_a.transaction()
    await tx_a.start()
    try:
        [a] = await store.append([Append("a-stream", 0, [ev(1)])], conn_a)
        [b] = await store.append([Append("b-stream", 0, [ev(2)])])  # commits at once
        assert a.position < b.position
        seen = await store.read_log(before[-1].log_position)
        assert seen == []  # B is not delivered before A can be
        await tx_a.commit()
    finally:
        await pool.release(conn_a)
    seen = await store.read_log(before[-1].log_position)
    assert [e.event_id for e in seen] == [a.event_id, b.event_id]


async def test_gap_safe_reader_delivers_a_late_commit_after_it_has_read_a_later_position(store, pool):
    """B's transaction is older but writes after A; B commits first and is read; A commits later.

    A reader that checkpoints only by global position would skip A (its position is lower than B's).
    """
    conn_a, conn_b = await pool.acquire(), await pool.acquire()
    try:
        tx_b = conn_b.transaction()
        await tx_b.start()
        await conn_b.fetchval("SELECT pg_current_xact_id()")  # B's transaction id is taken first
        tx_a = conn_a.transaction()
        await tx_a.start()
        [a] = await store.append([Append("a-stream", 0, [ev(1)])], conn_a)
        [b] = await store.append([Append("b-stream", 0, [ev(2)])], conn_b)
        assert a.position < b.position
        await tx_b.commit()

        delivered = []
        checkpoint = START
        batch = await store.read_log(checkpoint)
        delivered += batch
        checkpoint = batch[-1].log_position
        assert [e.event_id for e in delivered] == [b.event_id]  # the reader has read B, past A's position

        await tx_a.commit()
        batch = await store.read_log(checkpoint)
        delivered += batch
        assert [e.event_id for e in delivered] == [b.event_id, a.event_id]
        assert await store.read_log(batch[-1].log_position) == []  # exactly once

        replay = await store.read_log(START)  # the order is stable: a fresh reader sees the same
        assert [e.event_id for e in replay] == [e.event_id for e in delivered]
    finally:
        await pool.release(conn_a)
        await pool.release(conn_b)


async def test_concurrent_writers_are_read_exactly_once_in_a_stable_order(store):
    reader_seen: list[uuid.UUID] = []
    done = asyncio.Event()

    async def reader():
        checkpoint = START
        while True:
            batch = await store.read_log(checkpoint, limit=37)
            reader_seen.extend(e.event_id for e in batch)
            if batch:
                checkpoint = batch[-1].log_position
            elif done.is_set():
                return
            await asyncio.sleep(0.001)

    async def writer(w: int):
        for i in range(25):
            await store.append([Append(f"w{w}", i, [ev(i)])])

    task = asyncio.create_task(reader())
    await asyncio.gather(*(writer(w) for w in range(12)))
    done.set()
    await asyncio.wait_for(task, 30)
    log = await store.read_log(START, limit=10_000)
    assert len(reader_seen) == 300 == len(set(reader_seen))
    assert reader_seen == [e.event_id for e in log]


@pytest.mark.parametrize("read,gap_safe", [("read_log", True), ("read_log", False), ("replay_log", True),
                                           ("replay_log", False), ("publish_log", True)])
async def test_a_log_read_walks_the_log_order_index_and_never_sorts_the_log(store, pool, read, gap_safe):
    """A reader far behind (a rebuild, the relay after an outage) must not sort everything after its position
    on every batch: the order it asks for is the index's, so the plan is an index scan with no Sort at all."""
    from services.store.eventstore import _PUBLISH_LOG, _READ_LOG, _REPLAY_LOG

    await store.append([Append(f"s{n}", 0, [ev(n), ev(n)]) for n in range(50)])
    sql = {"read_log": _READ_LOG, "replay_log": _REPLAY_LOG, "publish_log": {True: _PUBLISH_LOG}}[read][gap_safe]
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_sort = off")  # a Sort the query needs stays in the plan regardless
        await conn.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN {sql}", "0", 0, 1000))
    assert "events_log_order" in plan, plan
    assert "Sort" not in plan, plan
    async with pool.acquire() as conn:
        batch = await (store.publish_log(START, 1000, conn) if read == "publish_log"
                       else getattr(store, read)(START, 1000, conn, gap_safe=gap_safe))
    assert len(batch) == 100


async def test_checkpoint_moves_only_with_the_consumers_transaction(pool):
    async with pool.acquire() as conn:
        assert await load_checkpoint(conn, "p") == START
        async with conn.transaction():
            await save_checkpoint(conn, "p", START._replace(transaction_id=10, global_position=7))
        assert await load_checkpoint(conn, "p") == (10, 7)
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await save_checkpoint(conn, "p", START._replace(transaction_id=11, global_position=9))
                raise RuntimeError("the consumer's write failed")
        assert await load_checkpoint(conn, "p") == (10, 7)


async def test_a_commit_wakes_readers_here_at_once_and_in_other_processes_by_notify(store, pool, schema, pg_url):
    here = LogWaker(store, pg_url)
    elsewhere_store = EventStore(pool, schema)  # another process's view of the same log
    elsewhere = LogWaker(elsewhere_store, pg_url)
    await here.start()
    await elsewhere.start()
    try:
        local, remote = here.subscribe(), elsewhere.subscribe()
        await store.append([Append("n", 0, [ev(1)])])
        assert local.is_set()  # in-process: poked as the append returns
        await asyncio.wait_for(remote.wait(), 5)  # the other process: by NOTIFY
        local.clear()
        remote.clear()
        await wait_flag(remote, 0.2)  # no further events: times out quietly, and our own NOTIFY is not news
        assert not remote.is_set() and not local.is_set()
    finally:
        await here.stop()
        await elsewhere.stop()


async def test_event_metadata_and_schema_version_round_trip(store):
    event = NewEvent(type="t", data={"nested": {"a": [1, 2]}}, schema_version=2,
                     metadata={"command_id": "c-1", "actor": "key_1"})
    org = uuid.uuid4()
    await store.append([Append("m", 0, [event], org_id=org)])
    [read] = await store.read_stream("m")
    assert read.data == {"nested": {"a": [1, 2]}}
    assert read.schema_version == 2
    assert read.metadata == {"command_id": "c-1", "actor": "key_1"}
    assert read.org_id == org and read.event_id == event.event_id


async def test_migrations_are_idempotent(pg_url, schema):
    from services.store.migrate import migrate

    conn = await asyncpg.connect(pg_url)
    try:
        assert await migrate(conn, schema) == []
    finally:
        await conn.close()
