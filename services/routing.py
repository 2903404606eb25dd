"""Creates decided by the worker that owns their date (`serve --workers N`).

With several workers behind one port, a create reaches whichever worker the kernel gave its connection. Two
workers booking on the same window-days must each check the other's writes: a group then locks the days' rows,
reads what the other wrote and decides inside a transaction (services/booking_batch.py), and with creates
spread over both workers most groups did, at ~40% more CPU per create and a second worker worth nothing. So
each org's dates are owned by one worker (by hash; a date's windows together, so the duplicate rule stays
within one worker). A create for a date another worker owns is handed to it over a local socket and decided
there with the creates it is grouping anyway, on its cache. Everything else is served where it lands.

Handing over is an optimisation, never needed for correctness: a create whose owner cannot be reached (not
listening yet, restarting) is decided here, as before. A create the owner took but did not answer has an
unknown outcome, as when the database connection drops during a commit: 503, and the client retries.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import socket
import struct
import time
import zlib
from typing import Any, Protocol

import orjson
from prometheus_client import Counter

from domain.errors import DomainError
from services.logs import log
from services.outcome import Meta, Outcome
from services.store.pool import DATABASE_UNAVAILABLE


class Decider(Protocol):
    """What the desk decides handed-over creates with: the command handler (services/handler.py, which routes
    through this module, so it is not imported here)."""

    async def create_appointment(self, org_id: str, request: dict[str, Any], meta: Meta,
                                 handed_over: bool = False) -> Outcome: ...


HANDED_OVER = Counter("slotledger_creates_handed_over_total",
                      "Creates for a date another worker owns, by what became of them", ["outcome"])
_LENGTH = struct.Struct(">I")
RECONNECT_AFTER = 1.0  # seconds without trying an owner that could not be reached (its creates are decided here)
ANSWER_WITHIN = 30.0  # an owner that took a create answers within this (a busy database has its own limits)


class OwnerLost(OSError):
    """The owner took the create and did not answer: its outcome is unknown. An OSError, so the gateway answers
    503 SERVICE_UNAVAILABLE with Retry-After, as for a database lost mid-commit."""


def address(port: int, worker: int) -> str:
    """A worker's socket: in Linux's abstract namespace (no file to clean up), named by the deployment's port.
    (Bound and connected through socket objects: uvloop refuses these names as paths.)"""
    return f"\0slotledger-{port}-worker-{worker}"


def owner(org_id: str, date: dt.date, workers: int) -> int:
    return zlib.crc32(f"{org_id}|{date.isoformat()}".encode()) % workers


def _frame(message: Any) -> bytes:
    body = orjson.dumps(message)
    return _LENGTH.pack(len(body)) + body


async def _read(reader: asyncio.StreamReader) -> Any:
    length, = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    return orjson.loads(await reader.readexactly(length))


class _Link:
    """One connection to one owner, many creates in flight on it, each answer matched by its number."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.writer = writer
        self.waiting: dict[int, asyncio.Future] = {}
        self._numbers = itertools.count()
        self._task = asyncio.create_task(self._answers(reader), name="owner-link")

    @property
    def open(self) -> bool:
        return not self._task.done()

    async def ask(self, message: list) -> list:
        number = next(self._numbers)
        answer = asyncio.get_running_loop().create_future()
        self.waiting[number] = answer
        try:
            self.writer.write(_frame([number, *message]))
            async with asyncio.timeout(ANSWER_WITHIN):
                return await answer
        except TimeoutError:
            raise OwnerLost("the owner of this date did not answer in time") from None
        finally:
            self.waiting.pop(number, None)

    async def _answers(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                number, *answer = await _read(reader)
                waiter = self.waiting.get(number)
                if waiter is not None and not waiter.done():
                    waiter.set_result(answer)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            self.writer.close()
            for waiter in self.waiting.values():
                if not waiter.done():
                    waiter.set_exception(OwnerLost("the owner of this date went away"))

    async def close(self) -> None:
        self.writer.close()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


class Router:
    """This worker's side: which worker owns a create's date, and handing creates to the others."""

    def __init__(self, port: int, worker: int, workers: int):
        self.port, self.worker, self.workers = port, worker, workers
        self._links: dict[int, _Link] = {}
        self._failed_at: dict[int, float] = {}  # owner → when it last could not be reached
        self._connecting: dict[int, asyncio.Task] = {}

    def owner(self, org_id: str, date: dt.date) -> int:
        return owner(org_id, date, self.workers)

    async def create(self, owner_: int, org_id: str, request: dict[str, Any], meta: Meta) -> Outcome | None:
        """The owner's answer (an Outcome, or its refusal raised as a DomainError); None if the owner cannot be
        reached, and the caller decides the create itself. Raises OwnerLost if the owner took it and did not
        answer."""
        link = await self._link(owner_)
        if link is None:
            HANDED_OVER.labels("decided_here").inc()
            return None
        try:
            kind, body = await link.ask([org_id, request, meta.as_dict()])
        except OwnerLost:
            HANDED_OVER.labels("lost").inc()
            raise
        HANDED_OVER.labels(kind).inc()
        if kind == "answered":
            status, data, position, idempotent = body
            return Outcome(status, data, position, idempotent)
        if kind == "refused":
            code, message, details, extra, headers = body
            raise DomainError(code, message, details, extra, headers)
        if kind == "unavailable":
            raise OwnerLost("the owner of this date could not reach the database")
        raise RuntimeError(f"the owner of this date failed the create: {body}")

    async def _link(self, owner_: int) -> _Link | None:
        link = self._links.get(owner_)
        if link is not None and link.open:
            return link
        if time.monotonic() - self._failed_at.get(owner_, -RECONNECT_AFTER) < RECONNECT_AFTER:
            return None
        connecting = self._connecting.get(owner_)
        if connecting is None:  # one attempt at a time, shared by every create that needs it
            connecting = self._connecting[owner_] = asyncio.create_task(self._connect(owner_))
            connecting.add_done_callback(lambda _: self._connecting.pop(owner_, None))
        return await asyncio.shield(connecting)

    async def _connect(self, owner_: int) -> _Link | None:
        try:
            async with asyncio.timeout(1.0):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.setblocking(False)
                try:
                    await asyncio.get_running_loop().sock_connect(sock, address(self.port, owner_))
                except BaseException:
                    sock.close()
                    raise
                reader, writer = await asyncio.open_unix_connection(sock=sock)
        except (OSError, TimeoutError):
            self._failed_at[owner_] = time.monotonic()
            return None
        link = self._links[owner_] = _Link(reader, writer)
        return link

    async def close(self) -> None:
        await asyncio.gather(*(link.close() for link in self._links.values()))
        self._links.clear()


class Desk:
    """The owner's side: creates other workers hand over, decided here as if they had arrived here."""

    def __init__(self, handler: Decider, port: int, worker: int):
        self.handler, self.port, self.worker = handler, port, worker
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(address(self.port, self.worker))
        sock.setblocking(False)
        self._server = await asyncio.start_unix_server(self._serve, sock=sock, backlog=128)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                number, org_id, request, meta = await _read(reader)
                task = asyncio.create_task(self._decide(writer, number, org_id, request, Meta(**meta)))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except (OSError, asyncio.IncompleteReadError, ValueError, TypeError):  # gone, or not one of our workers
            writer.close()
        finally:
            self._writers.discard(writer)

    async def _decide(self, writer: asyncio.StreamWriter, number: int, org_id: str, request: dict[str, Any],
                      meta: Meta) -> None:
        try:
            outcome = await self.handler.create_appointment(org_id, request, meta, handed_over=True)
            answer: list = ["answered", [outcome.status, outcome.data, outcome.position, outcome.idempotent]]
        except DomainError as exc:
            answer = ["refused", [exc.code, exc.message, exc.details, exc.extra, exc.headers]]
        except DATABASE_UNAVAILABLE:
            answer = ["unavailable", None]
        except Exception as exc:  # a bug: logged here, where it happened; the worker that asked answers 500
            log.exception("a create handed over failed")
            answer = ["failed", repr(exc)[:200]]
        if not writer.is_closing():
            writer.write(_frame([number, *answer]))

    async def stop(self, seconds: float = 5.0) -> None:
        """Take no more creates; answer those in hand (for at most `seconds`), then hang up."""
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.transport.pause_reading()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=seconds)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in list(self._writers):
            writer.close()
