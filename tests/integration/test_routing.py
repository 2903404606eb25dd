"""Creates handed to the worker that owns their date (services/routing.py), with two handlers in this process
standing for two workers over a real PostgreSQL and real local sockets: the owner decides them on its cache,
its refusals reach the caller as its own, a create whose owner is not there is decided where it landed, and a
create the owner took without answering is an unknown outcome (503), never decided twice."""
from __future__ import annotations

import asyncio
import datetime as dt
import socket

import pytest

from domain.errors import DomainError
from services.handler import CommandHandler
from services.local.ports import free_port
from services.outcome import Meta
from services.routing import HANDED_OVER, Desk, OwnerLost, Router, address
from tests.builders import create_body
from tests.integration.test_command_handler import at, clinic


def handed_over(outcome: str) -> float:
    return HANDED_OVER.labels(outcome)._value.get()


@pytest.fixture
async def workers(pool, store):
    """Two handlers as `serve --workers 2` wires them, each with its desk listening: [worker 0, worker 1]."""
    port = free_port()  # names this pair's sockets, as the deployment's port does
    handlers, desks = [], []
    for worker in (0, 1):
        handler = CommandHandler(pool, store)
        handler.router = Router(port, worker, 2)
        desk = Desk(handler, port, worker)
        await desk.start()
        handlers.append(handler)
        desks.append(desk)
    yield handlers, desks
    for handler, desk in zip(handlers, desks):
        await desk.stop()
        await handler.router.close()


def owned_by(worker: int, org_id: str, router: Router) -> dt.date:
    """A date three days or more ahead whose creates `worker` owns."""
    day = dt.date.today() + dt.timedelta(days=3)
    while router.owner(org_id, day) != worker:
        day += dt.timedelta(days=1)
    return day


async def test_a_create_for_a_date_another_worker_owns_is_decided_there(workers):
    (here, there), _ = workers
    org_id = await clinic(here, max_slots=2)
    await there.catalog(org_id)  # each worker has the configuration cached, as after its first request
    day = owned_by(1, org_id, here.router)
    answered = handed_over("answered")
    first = await here.create_appointment(org_id, create_body(at("09:30", day), "+71"), Meta())
    second = await here.create_appointment(org_id, create_body(at("09:45", day), "+72"), Meta())
    assert (first.status, second.status) == (201, 201) and handed_over("answered") == answered + 2
    assert first.position is not None and first.data["position"] == first.position
    stream = f"wd-{first.data['window_id']}-{day.isoformat()}"
    assert there.uow.cached_day(stream).version == 2  # the owner decided both, on its own cache
    assert here.uow.cached_day(stream) is None  # this worker never looked at that window-day
    with pytest.raises(DomainError) as full:  # the owner's refusal, as the owner gave it
        await here.create_appointment(org_id, create_body(at("10:00", day), "+73"), Meta())
    assert (full.value.status, full.value.code) == (409, "SLOT_FULL")
    assert full.value.details["max_slots"] == 2
    # A date this worker owns is decided here.
    mine = owned_by(0, org_id, here.router)
    outcome = await here.create_appointment(org_id, create_body(at("09:30", mine), "+74"), Meta())
    assert outcome.status == 201 and here.uow.cached_day(f"wd-{outcome.data['window_id']}-{mine}").version == 1


async def test_a_create_whose_owner_is_not_listening_is_decided_where_it_landed(workers):
    (here, there), desks = workers
    org_id = await clinic(here)
    await desks[1].stop()
    day = owned_by(1, org_id, here.router)
    decided_here = handed_over("decided_here")
    outcome = await here.create_appointment(org_id, create_body(at("09:30", day), "+81"), Meta())
    assert outcome.status == 201 and handed_over("decided_here") == decided_here + 1
    assert here.uow.cached_day(f"wd-{outcome.data['window_id']}-{day}").version == 1


async def test_a_create_the_owner_took_and_never_answered_is_not_decided_again(pool, store):
    """The owner read the create and hung up: it may have booked it. Deciding it here as well could book it
    twice, so the caller is told the outcome is unknown (an OSError: 503 with Retry-After)."""
    port = free_port()
    taken = asyncio.Event()

    async def takes_and_hangs_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        taken.set()
        writer.close()

    owner_socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    owner_socket.bind(address(port, 1))
    server = await asyncio.start_unix_server(takes_and_hangs_up, sock=owner_socket)
    here = CommandHandler(pool, store)
    here.router = Router(port, 0, 2)
    try:
        org_id = await clinic(here)
        day = owned_by(1, org_id, here.router)
        with pytest.raises(OwnerLost) as lost:
            await here.create_appointment(org_id, create_body(at("09:30", day), "+91"), Meta())
        assert taken.is_set() and isinstance(lost.value, OSError)
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM rm_appointments WHERE date = $1", day) == 0
    finally:
        server.close()
        await here.router.close()


async def test_kafka_commands_are_not_handed_over(workers):
    """A Kafka create reached this worker through its partition, which already keeps its key's order."""
    (here, _), _ = workers
    org_id = await clinic(here)
    day = owned_by(1, org_id, here.router)
    answered = handed_over("answered")
    outcome = await here.create_appointment(org_id, create_body(at("09:30", day), "+95"),
                                            Meta(command_id="9b2f3c9e-6d0c-4a8e-9a57-2f8a1b4c5d6e"))
    assert outcome.status == 201 and handed_over("answered") == answered
    assert here.uow.cached_day(f"wd-{outcome.data['window_id']}-{day}").version == 1
