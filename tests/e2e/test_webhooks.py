"""Webhooks (DESIGN §9) against a real local HTTP receiver started by the test; every signature is verified with
the `standardwebhooks` package."""
from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from services.runtime import Runtime
from services.settings import Settings
from tests.e2e.conftest import local_at, new_org, setup_clinic
from tests.builders import create_body

FAST = dict(webhooks_allow_private=True, webhook_timeout_seconds=1.0, webhook_retry_base_seconds=0.05,
            webhook_retry_max_seconds=0.4)


@dataclass
class Receiver:
    """A webhook endpoint: records what it accepts (2xx), and can fail, time out or say 410 on request."""
    fail_rate: float = 0.0
    timeout_rate: float = 0.0
    gone: bool = False
    delay: float = 0.0
    accepted: list[dict] = field(default_factory=list)  # {"headers", "body", "json"} in arrival order
    requests: int = 0
    url: str = ""
    _runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = await request.text()
        if self.gone:
            return web.Response(status=410)
        roll = random.random()
        if roll < self.timeout_rate:
            await asyncio.sleep(1.5)  # past the dispatcher's timeout: it counts as a failure
            return web.Response(status=200)
        if roll < self.timeout_rate + self.fail_rate:
            return web.Response(status=500)
        if self.delay:
            await asyncio.sleep(self.delay)
        self.accepted.append({"headers": {k.lower(): v for k, v in request.headers.items()}, "body": body})
        return web.Response(status=204)

    async def start(self) -> "Receiver":
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/hook"
        return self

    async def stop(self) -> None:
        await self._runner.cleanup()

    def verified(self, *secrets: str) -> list[dict]:
        """Every accepted delivery, its signature checked against each secret given (all must verify)."""
        out = []
        for item in self.accepted:
            for secret in secrets:
                payload = Webhook(secret).verify(item["body"], item["headers"])
                assert payload["id"] == item["headers"]["webhook-id"]
            out.append(payload)
        return out


async def _runtime(pg_url, schema, components):
    settings = Settings(database_url=pg_url, database_schema=schema, http_port=0, kafka_bootstrap=None,
                        poll_interval_seconds=0.2, auth_failures_per_minute=100_000, **FAST)
    rt = Runtime(settings, components=components)
    await rt.start()
    return rt


@pytest.fixture
async def hooks_runtime(pg_url, schema):
    rt = await _runtime(pg_url, schema, ("gateway", "projectors", "webhooks"))
    yield rt
    await rt.stop()


@pytest.fixture
async def no_dispatcher(pg_url, schema):
    """Endpoints on this machine allowed, but no dispatcher in the test's process."""
    rt = await _runtime(pg_url, schema, ("gateway", "projectors"))
    yield rt
    await rt.stop()


@pytest.fixture
async def receiver():
    r = await Receiver().start()
    yield r
    await r.stop()


async def _until(check, seconds: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def _appointment_events(rt: Runtime, org_id: str) -> dict[str, int]:
    async with rt.pool.acquire() as conn:
        rows = await conn.fetch("SELECT event_id::text, global_position FROM events WHERE org_id = $1::uuid"
                                " AND event_type LIKE 'appointment.%'", org_id)
    return {r["event_id"]: r["global_position"] for r in rows}


async def _subscribe(api, url: str, **extra) -> tuple[dict, str]:
    """The endpoint, and its secret (shown this once)."""
    status, body = await api.post("/v1/webhooks", {"url": url, **extra})
    assert status == 201, body
    assert body["secret"].startswith("whsec_") and body["webhook_id"] == body["data"]["webhook_id"]
    assert "secret" not in (await api.get(f"/v1/webhooks/{body['webhook_id']}"))[1]["data"] or \
        (await api.get(f"/v1/webhooks/{body['webhook_id']}"))[1]["data"]["secret"] is None
    return body["data"], body["secret"]


async def _traffic(api, n: int, offset: int = 0) -> list[str]:
    """n bookings, then an update of each, then a cancel of every other one."""
    async def book(i):
        status, body = await api.post("/v1/appointments", create_body(
            local_at(api, 3 + i % 4, "10:00" if i % 2 else "18:00"), f"+1555{offset + i:07d}", api.ids["checkup"]))
        assert status == 201, body
        return body["appointment_id"]

    ids = await asyncio.gather(*(book(i) for i in range(n)))
    updates = await asyncio.gather(*(api.patch(f"/v1/appointments/{a}", {"notes": f"n{a}"}) for a in ids))
    assert {s for s, _ in updates} == {200}
    cancels = await asyncio.gather(*(api.patch(f"/v1/appointments/{a}", {"status": "cancelled"}) for a in ids[::2]))
    assert {s for s, _ in cancels} == {200}
    return list(ids)


def _in_log_order_per_appointment(payloads: list[dict]) -> None:
    first_seen: dict[str, dict] = {}
    for p in payloads:  # at-least-once: a redelivery repeats an id; order is judged on first receipts
        first_seen.setdefault(p["id"], p)
    positions: dict[str, list[int]] = defaultdict(list)
    for p in first_seen.values():
        positions[p["subject"]].append(p["position"])
    for subject, seen in positions.items():
        assert seen == sorted(seen), f"{subject}: delivered out of log order {seen}"


async def test_every_event_is_delivered_signed_and_in_order_per_appointment(hooks_runtime, http, receiver):
    api = await setup_clinic(await new_org(hooks_runtime, http), max_slots=50)
    hook, secret = await _subscribe(api, receiver.url, event_types=["appointment.*"], description="CRM")
    ids = await _traffic(api, 200)  # 200 bookings, 200 updates, 100 cancels
    events = await _appointment_events(hooks_runtime, api.org_id)
    assert len(events) == 500

    async def all_there():
        return set(events) <= {item["headers"]["webhook-id"] for item in receiver.accepted}

    await _until(all_there, what="every event delivered")
    payloads = receiver.verified(secret)
    assert {p["id"] for p in payloads} == set(events)  # nothing missing, nothing else (appointment.* only)
    assert all(p["type"].startswith("slotledger.appointment.") for p in payloads)
    assert {p["subject"] for p in payloads} == set(ids)
    _in_log_order_per_appointment(payloads)
    status, deliveries = await api.get(f"/v1/webhooks/{hook['webhook_id']}/deliveries?status=delivered&limit=200")
    assert status == 200 and len(deliveries["data"]) == 200
    assert all(d["attempts"][0]["status_code"] == 204 for d in deliveries["data"])


async def test_a_flaky_receiver_gets_everything_after_retries(hooks_runtime, http, receiver):
    api = await setup_clinic(await new_org(hooks_runtime, http), max_slots=50)
    hook, secret = await _subscribe(api, receiver.url)
    receiver.fail_rate, receiver.timeout_rate = 0.5, 0.05
    ids = await _traffic(api, 40, offset=1000)
    events = await _appointment_events(hooks_runtime, api.org_id)

    async def enough_failures():
        return receiver.requests >= 150

    await _until(enough_failures, what="a while of failures")
    receiver.fail_rate, receiver.timeout_rate = 0.0, 0.0

    async def all_there():
        return set(events) <= {item["headers"]["webhook-id"] for item in receiver.accepted}

    await _until(all_there, 90, what="every event delivered after retries")
    payloads = [p for p in receiver.verified(secret) if p["type"].startswith("slotledger.appointment.")]
    assert {p["subject"] for p in payloads} == set(ids)
    _in_log_order_per_appointment(payloads)
    status, body = await api.get(f"/v1/webhooks/{hook['webhook_id']}/deliveries?limit=200")
    retried = [d for d in body["data"] if len(d["attempts"]) > 1]
    assert retried, "no delivery needed a retry"
    assert all(d["status"] == "delivered" for d in body["data"] if d["event_type"].startswith("appointment."))
    failures = [a for d in retried for a in d["attempts"][:-1]]
    assert {a["status_code"] for a in failures} <= {500, None}
    assert any(a["status_code"] == 500 for a in failures)
    status, hook_now = await api.get(f"/v1/webhooks/{hook['webhook_id']}")
    assert hook_now["data"]["status"] == "enabled" and hook_now["data"]["failing_since"] is None


async def test_rotation_signs_with_both_secrets_and_410_disables(hooks_runtime, http, receiver):
    api = await setup_clinic(await new_org(hooks_runtime, http), max_slots=50)
    status, created = await api.post("/v1/webhooks", {"url": receiver.url})
    old = created["secret"]
    hook = created["data"]
    status, rotated = await api.post(f"/v1/webhooks/{hook['webhook_id']}/rotate-secret")
    assert status == 200 and rotated["secret"] != old and rotated["data"]["previous_valid_until"]
    status, test = await api.post(f"/v1/webhooks/{hook['webhook_id']}/test")
    assert status == 202 and test["data"]["event_type"] == "webhook.test"

    async def got_test():
        return any("webhook.test" in item["body"] for item in receiver.accepted)

    await _until(got_test, what="the test event")
    (payload,) = [p for p in receiver.verified(old, rotated["secret"]) if p["type"] == "slotledger.webhook.test"]
    assert len(receiver.accepted[-1]["headers"]["webhook-signature"].split(" ")) == 2

    receiver.gone = True
    status, body = await api.post("/v1/appointments", create_body(local_at(api, 3, "10:00"), "+15550000001",
                                                                  api.ids["checkup"]))
    assert status == 201

    async def disabled():
        return (await api.get(f"/v1/webhooks/{hook['webhook_id']}"))[1]["data"]["status"] == "disabled"

    await _until(disabled, what="the endpoint disabled by 410")
    status, now = await api.get(f"/v1/webhooks/{hook['webhook_id']}")
    assert "410" in now["data"]["disabled_reason"]
    requests = receiver.requests
    await asyncio.sleep(1.0)
    assert receiver.requests == requests  # nothing more is sent to a disabled endpoint
    receiver.gone = False
    status, body = await api.patch(f"/v1/webhooks/{hook['webhook_id']}", {"status": "enabled"})
    assert status == 200 and body["data"]["status"] == "enabled"

    async def booked_arrives():
        return any("appointment.booked" in item["body"] for item in receiver.accepted)

    await _until(booked_arrives, what="the waiting delivery after re-enabling")
    status, deliveries = await api.get(f"/v1/webhooks/{hook['webhook_id']}/deliveries")
    booked = next(d for d in deliveries["data"] if d["event_type"] == "appointment.booked")
    assert [a["status_code"] for a in booked["attempts"]] == [410, 204]
    status, again = await api.post(f"/v1/webhooks/{hook['webhook_id']}/deliveries/{booked['delivery_id']}/retry")
    assert status == 202 and again["data"]["status"] == "pending"
    await _until(lambda: _attempts(api, hook, booked["delivery_id"], 3), what="the manual retry")


async def _attempts(api, hook, delivery_id: int, n: int) -> bool:
    status, deliveries = await api.get(f"/v1/webhooks/{hook['webhook_id']}/deliveries")
    return any(d["delivery_id"] == delivery_id and len(d["attempts"]) >= n for d in deliveries["data"])


async def test_private_and_plain_http_endpoints_are_refused_without_the_setting(runtime, http):
    api = await new_org(runtime, http)
    for url in ("http://127.0.0.1:9/hook", "https://10.1.2.3/hook", "https://[::1]/hook", "https://169.254.169.254/",
                "ftp://example.org/x", "https://user:pw@127.0.0.1/"):
        status, body = await api.post("/v1/webhooks", {"url": url})
        assert (status, body["error"]["code"]) == (400, "VALIDATION_ERROR"), (url, body)
        assert "url" in body["error"]["details"]
    status, body = await api.post("/v1/webhooks", {"url": "https://127.0.0.1/x", "event_types": ["teleport.*"]})
    assert status == 400 and "event_types" in body["error"]["details"]
    status, body = await api.get("/v1/webhooks")
    assert body["data"] == []


async def test_a_dispatcher_killed_mid_delivery_loses_nothing(no_dispatcher, http, receiver, pg_url, schema):
    runtime = no_dispatcher
    api = await setup_clinic(await new_org(runtime, http), max_slots=50)
    for i in range(3):  # before the endpoint exists (and no dispatcher has read them yet): never sent to it
        status, body = await api.post("/v1/appointments", create_body(local_at(api, 7, "10:00"), f"+1555{3000 + i:07d}",
                                                                      api.ids["checkup"]))
        assert status == 201, body
    earlier = set(await _booked(runtime, api.org_id))
    hook, secret = await _subscribe(api, receiver.url, event_types=["appointment.booked"])
    receiver.delay = 0.2  # every delivery is in flight for a while
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLOTLEDGER_")}
    env.update(SLOTLEDGER_DATABASE_URL=pg_url, SLOTLEDGER_DATABASE_SCHEMA=schema, SLOTLEDGER_LOG_LEVEL="warning",
               SLOTLEDGER_POLL_INTERVAL_SECONDS="0.2", SLOTLEDGER_WEBHOOKS_ALLOW_PRIVATE="1",
               SLOTLEDGER_WEBHOOK_RETRY_BASE_SECONDS="0.05", SLOTLEDGER_HTTP_PORT="0")

    def dispatcher() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "services.cli", "serve", "--only", "webhooks"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    proc = dispatcher()
    try:
        answers = await asyncio.gather(*(api.post("/v1/appointments", create_body(
            local_at(api, 3 + i % 3, "10:00"), f"+1555{2000 + i:07d}", api.ids["checkup"])) for i in range(60)))
        assert {s for s, _ in answers} == {201}

        async def some_delivered():
            return len(receiver.accepted) >= 5

        await _until(some_delivered, what="deliveries under way")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        killed_at = len(receiver.accepted)
        proc = dispatcher()
        events = set(await _booked(runtime, api.org_id)) - earlier

        async def all_there():
            return events <= {item["headers"]["webhook-id"] for item in receiver.accepted}

        await _until(all_there, 90, what="every booking delivered after the restart")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    payloads = receiver.verified(secret)
    assert {p["id"] for p in payloads} == events and killed_at < len(events)
    assert len(payloads) >= len(events)  # duplicates allowed, each with its event's webhook-id


async def _booked(rt: Runtime, org_id: str) -> list[str]:
    async with rt.pool.acquire() as conn:
        return [r["event_id"] for r in await conn.fetch(
            "SELECT event_id::text FROM events WHERE org_id = $1::uuid AND event_type = 'appointment.booked'", org_id)]


async def test_the_webhook_routes_need_settings_write_and_stay_in_their_org(hooks_runtime, http, receiver):
    api = await new_org(hooks_runtime, http)
    other = await new_org(hooks_runtime, http, name="Other")
    hook, _ = await _subscribe(api, receiver.url)
    status, body = await other.get(f"/v1/webhooks/{hook['webhook_id']}")
    assert (status, body["error"]["code"]) == (404, "NOT_FOUND")
    status, body = await other.call("DELETE", f"/v1/webhooks/{hook['webhook_id']}")
    assert status == 404
    status, body = await api.call("DELETE", f"/v1/webhooks/{hook['webhook_id']}")
    assert status == 200 and body["data"]["status"] == "deleted"
    async with aiohttp.ClientSession() as session:
        async with session.get(hooks_runtime.http_url + "/v1/webhooks") as resp:
            assert resp.status == 401
