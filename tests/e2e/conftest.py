"""The real service on real HTTP: a Runtime (gateway + projectors) on a free port, per test schema."""
from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from domain.timerules import WEEKDAYS
from services.keys import SCOPES, create_key
from services.runtime import Runtime
from services.settings import Settings


@pytest.fixture
async def runtime(pg_url, schema):
    settings = Settings(database_url=pg_url, database_schema=schema, http_port=0, kafka_bootstrap=None,
                        poll_interval_seconds=0.2, auth_failures_per_minute=100_000)
    rt = Runtime(settings, components=("gateway", "projectors"))
    await rt.start()
    yield rt
    await rt.stop()


@pytest.fixture
async def kafka_runtime(pg_url, schema, kafka_bootstrap, topic_prefix):
    settings = Settings(database_url=pg_url, database_schema=schema, http_port=0, kafka_bootstrap=kafka_bootstrap,
                        topic_prefix=topic_prefix, poll_interval_seconds=0.2, auth_failures_per_minute=100_000)
    # No sweeper loop (as in `runtime`): a test that moves the clock sweeps by hand and counts what that sweep
    # expired, which a background sweep a second later could have taken first.
    rt = Runtime(settings, components=("gateway", "projectors", "ingestor", "relay"))
    await rt.start()
    yield rt
    await rt.stop()


@dataclass
class Api:
    """A client for one org, with a key holding every scope unless told otherwise."""
    session: aiohttp.ClientSession
    base: str
    key: str
    org_id: str = ""
    tz: str = "UTC"
    ids: dict = field(default_factory=dict)

    async def call(self, method: str, path: str, json=None, key: str | None = "default", headers=None, data=None):
        hdrs = dict(headers or {})
        token = self.key if key == "default" else key
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        async with self.session.request(method, self.base + path, json=json, data=data, headers=hdrs) as resp:
            body = await resp.json(content_type=None)
            return resp.status, body

    async def get(self, path, **kw):
        return await self.call("GET", path, **kw)

    async def post(self, path, json=None, **kw):
        return await self.call("POST", path, json=json, **kw)

    async def patch(self, path, json=None, **kw):
        return await self.call("PATCH", path, json=json, **kw)


async def new_org(runtime: Runtime, session, name="Clinic", tz="UTC", scopes=SCOPES) -> Api:
    catalog = await runtime.handler.create_org(name, tz)
    async with runtime.pool.acquire() as conn:
        key = await create_key(conn, catalog.org_id, list(scopes))
    return Api(session, runtime.http_url, key, catalog.org_id, tz)


async def key_with(runtime: Runtime, org_id: str, scopes) -> str:
    async with runtime.pool.acquire() as conn:
        return await create_key(conn, org_id, list(scopes))


async def setup_clinic(api: Api, max_slots=20, windows=(("Morning", "09:00", "12:00", "MA"),
                                                       ("Evening", "17:00", "20:00", "EA"))) -> Api:
    """Two services, one branch, the given windows on every weekday."""
    s, checkup = await api.post("/v1/services", {"name": "General Checkup", "duration_minutes": 30})
    assert s == 201, checkup
    s, follow = await api.post("/v1/services", {"name": "Follow-up Visit", "duration_minutes": 15})
    assert s == 201, follow
    s, branch = await api.post("/v1/branches", {"name": "Main"})
    assert s == 201, branch
    api.ids.update(checkup=checkup["data"]["service_id"], follow=follow["data"]["service_id"],
                   branch=branch["data"]["branch_id"], windows={})
    for day in WEEKDAYS:
        for session, start, end, batch in windows:
            s, w = await api.post("/v1/appointment-slots", {
                "branch_id": api.ids["branch"], "day_of_week": day, "session": session, "start_time": start,
                "end_time": end, "max_slots": max_slots, "batch": batch})
            assert s == 201, w
            api.ids["windows"][(day, session)] = w["data"]["window_id"]
    return api


def local_at(api: Api, days_ahead: int, hhmm: str) -> str:
    """An ISO instant for a local wall-clock time `days_ahead` days from today in the org's timezone."""
    tz = ZoneInfo(api.tz)
    day = dt.datetime.now(tz).date() + dt.timedelta(days=days_ahead)
    moment = dt.datetime.combine(day, dt.time.fromisoformat(hhmm), tzinfo=tz)
    return moment.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def local_date(api: Api, days_ahead: int) -> str:
    return (dt.datetime.now(ZoneInfo(api.tz)).date() + dt.timedelta(days=days_ahead)).isoformat()


async def wait_healthy(session: aiohttp.ClientSession, url: str, proc=None, seconds: float = 60) -> None:
    """Until a service process started by the test answers /healthz (failing if the process exits first)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        assert proc is None or proc.poll() is None, "the service process exited"
        try:
            async with session.get(url + "/healthz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        assert asyncio.get_running_loop().time() < deadline, f"{url} did not start"
        await asyncio.sleep(0.1)


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def api(runtime, http) -> Api:
    return await setup_clinic(await new_org(runtime, http))
