"""Waking the log's readers when events are committed: at once in this process, by NOTIFY in the others."""
from __future__ import annotations

import asyncio
import uuid

import asyncpg

from services.store.eventstore import EventStore


class LogWaker:
    """Wakes log readers. In-process readers are poked as soon as a writer here announces a commit; readers in
    other processes get a NOTIFY, sent at most once per `coalesce` seconds however many commits there were:
    NOTIFY takes a database-wide lock at commit, so a NOTIFY in every writing transaction (a trigger) would
    serialise all commits. Readers also poll, for writers that announce nothing."""

    def __init__(self, store: EventStore, url: str, coalesce: float = 0.002):
        self.store = store
        self.url = url
        self.coalesce = coalesce
        self._subscribers: set[asyncio.Event] = set()
        self._conn: asyncpg.Connection | None = None
        self._pending = asyncio.Event()
        self._token = uuid.uuid4().hex  # our own NOTIFYs come back to us; they are not news
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        await self._connect()
        self.store.on_commit(self._committed)
        self._task = asyncio.create_task(self._notify_others(), name="log-notify")

    def subscribe(self) -> asyncio.Event:
        """Each reader gets its own flag, so one reader's wake-up never hides another's."""
        flag = asyncio.Event()
        self._subscribers.add(flag)
        return flag

    def _committed(self) -> None:
        self.poke()
        self._pending.set()

    def _on_notify(self, conn: object, pid: int, channel: str, payload: str) -> None:
        if payload != self._token:
            self.poke()

    def poke(self) -> None:
        for flag in self._subscribers:
            flag.set()

    async def _notify_others(self) -> None:
        from services.loops import health

        loop = health("log-waker")
        while True:
            await self._pending.wait()
            self._pending.clear()
            try:
                if self._conn is None or self._conn.is_closed():  # the database restarted: listen again
                    await self._connect()
                await self._conn.execute("SELECT pg_notify($1, $2)", self.store.channel, self._token, timeout=5)
                loop.ok()
            except Exception as exc:  # the other processes' readers poll meanwhile
                self._conn = None
                self._pending.set()
                await loop.failed(exc)
            await asyncio.sleep(self.coalesce)

    async def _connect(self) -> None:
        self._conn = await asyncpg.connect(self.url, timeout=5)
        await self._conn.add_listener(self.store.channel, self._on_notify)
        self.poke()  # what was written while we were not listening

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


async def wait_flag(flag: asyncio.Event, timeout: float) -> None:
    # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that arrives as the
    # flag is set, and the reader's task would then never stop.
    try:
        async with asyncio.timeout(timeout):
            await flag.wait()
    except TimeoutError:
        pass
    flag.clear()
