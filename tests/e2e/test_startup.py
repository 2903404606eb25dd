"""Starting the service does not wait for the ingestor's consumer group to form: a group forming from scratch
waits out the broker's initial rebalance delay (Kafka's default is 3 s, more when several consumers join
together), and the HTTP gateway must answer meanwhile. The ingestor takes its commands once the group forms.
On a broker that has just started (as `slotledger up` starts one), the consumers do not start before the broker
can name their group's coordinator, so the service's first seconds log no Kafka client errors."""
from __future__ import annotations

import asyncio
import logging
import os

import aiohttp
import pytest

from services.local.kafka import LocalKafka
from services.runtime import Runtime
from services.settings import Settings
from tests.builders import create_body
from tests.e2e.conftest import local_at, new_org, setup_clinic
from tests.e2e.kafka import command, encoded, publish, read_topic, results_by_command

DELAY_MS = 8_000  # long enough that the group cannot form while the service starts, however slow the machine


@pytest.fixture
async def slow_to_form_broker(work_dir):
    broker = LocalKafka(work_dir / f"kafka-startup-{os.getpid()}", initial_rebalance_delay_ms=DELAY_MS)
    await asyncio.to_thread(broker.start)
    yield broker
    await asyncio.to_thread(broker.remove)


async def test_the_gateway_answers_while_the_ingestors_group_is_still_forming(pg_url, schema, slow_to_form_broker,
                                                                             topic_prefix, caplog):
    caplog.set_level(logging.WARNING, logger="aiokafka")
    broker = slow_to_form_broker
    settings = Settings(database_url=pg_url, database_schema=schema, http_port=0, kafka_bootstrap=broker.bootstrap,
                        topic_prefix=topic_prefix, poll_interval_seconds=0.2, auth_failures_per_minute=10**6)
    rt = Runtime(settings, components=("gateway", "projectors", "ingestor", "relay"))
    started = asyncio.get_running_loop().time()
    await rt.start()
    try:
        # The broker cannot have formed the group yet: start() returned without waiting for it.
        took = asyncio.get_running_loop().time() - started
        assert all(not ingestor._consumer.assignment() for ingestor in rt.ingestors), f"start took {took:.1f}s"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
            api = await setup_clinic(await new_org(rt, session))
            status, body = await api.post("/v1/appointments", create_body(local_at(api, 2, "09:30"), "+19995550001"))
            assert status == 201, body
            forming = all(not ingestor._consumer.assignment() for ingestor in rt.ingestors)

            create = command(api.org_id, "create_appointment", create_body(local_at(api, 3, "09:30"), "+19995550002"))
            await publish(broker.bootstrap, settings.topic("commands"), [encoded(create, "day-3")])
            records = await read_topic(broker.bootstrap, settings.topic("command-results"),
                                       lambda recs: create["command_id"] in results_by_command(recs), 90)
        results = results_by_command(records).get(create["command_id"])
        assert results and results[0]["status"] == 201, results  # the ingestor took it once the group formed
        assert forming, "the HTTP create was answered only after the group had formed"
        assert any(ingestor._consumer.assignment() for ingestor in rt.ingestors)
        kafka_errors = [r.getMessage() for r in caplog.records
                        if r.name.startswith("aiokafka") and r.levelno >= logging.ERROR]
        assert not kafka_errors, kafka_errors  # e.g. "Group Coordinator Request failed", once per consumer
    finally:
        await rt.stop()
