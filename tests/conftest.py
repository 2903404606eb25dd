"""Real servers for the whole test session.

PostgreSQL and Kafka come from, in order of preference: SLOTLEDGER_TEST_DATABASE_URL /
SLOTLEDGER_TEST_KAFKA_BOOTSTRAP; testcontainers when a Docker engine answers; otherwise the same local
servers `slotledger up` runs (embedded PostgreSQL, Kafka from Maven jars). Each test gets its own schema
and its own topic prefix.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import asyncpg
import pytest

from services.logs import configure
from services.store.eventstore import EventStore
from services.store.pool import create_pool
from services.store.migrate import migrate

# The service's own log format, as in production (JSON lines, plain tracebacks). structlog's default console
# renderer draws each traceback with every local variable (whole window-days): when PostgreSQL was killed under
# load, drawing the loops' failures held the event loop for 28 s, and requests timed out behind it.
configure("info")


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def work_dir():
    path = Path(tempfile.mkdtemp(prefix="slotledger-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_url(work_dir):
    if url := os.environ.get("SLOTLEDGER_TEST_DATABASE_URL"):
        yield url
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as container:
            yield container.get_connection_url()
        return
    from services.local.postgres import LocalPostgres

    server = LocalPostgres(work_dir / "postgres", durable=False).start()
    yield server.url
    server.remove()


@pytest.fixture(scope="session")
def kafka_bootstrap(work_dir):
    if bootstrap := os.environ.get("SLOTLEDGER_TEST_KAFKA_BOOTSTRAP"):
        yield bootstrap
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    from services.local.kafka import LocalKafka

    broker = LocalKafka(work_dir / "kafka", initial_rebalance_delay_ms=0).start()  # a new group per test
    yield broker.bootstrap
    broker.remove()


@pytest.fixture
async def schema(pg_url):
    name = "t_" + uuid.uuid4().hex[:12]
    conn = await asyncpg.connect(pg_url)
    try:
        await migrate(conn, name)
    finally:
        await conn.close()
    yield name
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(f'DROP SCHEMA "{name}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
async def pool(pg_url, schema):
    pool = await create_pool(pg_url, schema, min_size=1, max_size=40)
    yield pool
    await pool.close()


@pytest.fixture
def store(pool, schema):
    return EventStore(pool, schema)


@pytest.fixture
def topic_prefix():
    return "t" + uuid.uuid4().hex[:10]
