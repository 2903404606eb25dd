"""`slotledger up`'s local broker keeps what it holds across restarts, as its local PostgreSQL does. A command the
broker acknowledged while no ingestor was taking commands is booked after the next start, and the events the relay
published before the restart are still on the events topic for the consumers that read it (the relay's checkpoint,
kept in PostgreSQL, is past them: they would never be published again)."""
from __future__ import annotations

import asyncio
import json
import shutil
import uuid

import aiohttp

from services.local.stack import LocalStack
from services.runtime import Runtime
from services.settings import Settings
from tests.builders import create_body
from tests.e2e.conftest import Api, local_at, new_org, setup_clinic
from tests.e2e.kafka import command, encoded, publish, read_topic, results_by_command


def _event_ids(records) -> set[str]:
    return {json.loads(record.value)["id"] for record in records}


async def test_a_command_the_broker_took_before_a_restart_is_booked_after_it(pg_url, schema, work_dir,
                                                                             topic_prefix):
    state = work_dir / f"stack-{uuid.uuid4().hex[:8]}"
    # The test's PostgreSQL stands in for the stack's own (its restart is covered by test_up.py); the broker is
    # the stack's, started and stopped as `slotledger up` does.
    settings = Settings(database_url=pg_url, database_schema=schema, http_port=0, state_dir=state,
                        topic_prefix=topic_prefix, poll_interval_seconds=0.2, auth_failures_per_minute=10**6)
    timeout = aiohttp.ClientTimeout(total=20)
    try:
        stack = LocalStack(settings)
        first = await asyncio.to_thread(stack.start)
        try:
            rt = Runtime(first, components=("gateway", "projectors", "relay"))
            await rt.start()
            try:
                async with aiohttp.ClientSession(timeout=timeout) as session:
                    api = await setup_clinic(await new_org(rt, session))
                published = await read_topic(first.kafka_bootstrap, first.topic("events"), lambda recs: recs, 60)
            finally:
                await rt.stop()
            assert published, "the relay published nothing before the restart"
            create = command(api.org_id, "create_appointment",
                             create_body(local_at(api, 2, "09:30"), "+19995550001"))
            await publish(first.kafka_bootstrap, first.topic("commands"), [encoded(create, "day-2")])
        finally:
            await asyncio.to_thread(stack.stop)

        stack = LocalStack(settings)
        second = await asyncio.to_thread(stack.start)
        try:
            assert second.kafka_bootstrap == first.kafka_bootstrap  # the last start's port, still free
            rt = Runtime(second, components=("gateway", "projectors", "ingestor", "relay"))
            await rt.start()
            try:
                records = await read_topic(second.kafka_bootstrap, second.topic("command-results"),
                                           lambda recs: create["command_id"] in results_by_command(recs), 90)
                results = results_by_command(records).get(create["command_id"])
                assert results and results[0]["status"] == 201, results
                appointment_id = results[0]["data"]["appointment_id"]
                async with aiohttp.ClientSession(timeout=timeout) as session:
                    again = Api(session, rt.http_url, api.key, api.org_id, api.tz)
                    status, body = await again.get(f"/v1/appointments/{appointment_id}")
                assert status == 200, body
                kept = await read_topic(second.kafka_bootstrap, second.topic("events"),
                                        lambda recs: _event_ids(published) <= _event_ids(recs), 30)
            finally:
                await rt.stop()
        finally:
            await asyncio.to_thread(stack.stop)
        assert _event_ids(published) <= _event_ids(kept)
    finally:
        shutil.rmtree(state, ignore_errors=True)
