"""What the service sends, received for the bench on a thread and event loop of its own (the bench's own loop
blocks while the load generator runs): webhook deliveries (LagReceiver) and the relay's CloudEvents on the events
topic (RelayLagReader). Each records, per event, the time from its commit (the event's `time`, when its
transaction wrote it) to its receipt."""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
import time

import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer


class _Lags:
    def __init__(self) -> None:
        self.lags_ms: list[float] = []
        self.received_at: list[float] = []  # monotonic seconds, one per entry of lags_ms
        self.ids: set[str] = set()
        self.last_receipt = 0.0

    def received(self, event: dict) -> None:
        if event["id"] not in self.ids:  # at-least-once: the first receipt counts
            self.ids.add(event["id"])
            sent = dt.datetime.fromisoformat(event["time"])
            self.lags_ms.append((dt.datetime.now(dt.timezone.utc) - sent).total_seconds() * 1000)
            self.received_at.append(time.monotonic())
        self.last_receipt = time.monotonic()

    def wait_quiet(self, quiet: float = 3.0, at_most: float = 120.0) -> None:
        """Until no delivery arrived for `quiet` seconds (the backlog drained)."""
        deadline = time.monotonic() + at_most
        while time.monotonic() < deadline and (not self.last_receipt or time.monotonic() - self.last_receipt < quiet):
            time.sleep(0.2)

    def summary(self) -> dict:
        lags = sorted(self.lags_ms)

        def pct(p: float) -> float | None:
            return round(lags[min(len(lags) - 1, int(p / 100 * len(lags)))], 1) if lags else None

        start = self.received_at[0] if self.received_at else 0.0
        step = max(1, len(lags) // 2000)  # enough points to draw, few enough to keep the report small
        series = [[round(t - start, 3), round(lag, 1)]
                  for t, lag in zip(self.received_at[::step], self.lags_ms[::step])]
        return {"deliveries": len(lags), "lag_ms": {"p50": pct(50), "p99": pct(99), "max": pct(100)},
                "lag_over_time": series}


class RelayLagReader(_Lags):
    """Reads the events topic from its end as the load starts. Its fetches wait on the broker the client's
    default 500 ms: with fetch_min_bytes 1 the broker answers a waiting fetch as soon as an event lands, so the
    wait bounds only idle time, never the lag. (A 5 ms wait, as this reader had until session 16, made the
    broker answer hundreds of fetches a second: 0.2-0.35 of the 2 cores, which cut the 64-client creates/s it
    was measured beside by a fifth and raised the lag it measured; bench/reports/ab-session16-lag-reader.txt.)"""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__()
        self.bootstrap, self.topic = bootstrap, topic
        self._ready = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=lambda: asyncio.run(self._read()), daemon=True, name="relay-lag")

    async def _read(self) -> None:
        consumer = AIOKafkaConsumer(self.topic, bootstrap_servers=self.bootstrap, auto_offset_reset="latest",
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            while not consumer.assignment():
                await consumer.getmany(timeout_ms=100)
            for tp in consumer.assignment():
                await consumer.position(tp)  # at the end now: only what the load writes is counted
            self._ready.set()
            while not self._stopping:
                for records in (await consumer.getmany(timeout_ms=100, max_records=5000)).values():
                    for record in records:
                        self.received(orjson.loads(record.value))
        finally:
            await consumer.stop()

    def start(self) -> "RelayLagReader":
        self._thread.start()
        self._ready.wait(30)
        return self

    def stop(self, quiet: float = 2.0, at_most: float = 60.0) -> dict:
        """After the load: until nothing arrived for `quiet` seconds (the relay caught up), then the summary."""
        self.wait_quiet(quiet, at_most)
        self._stopping = True
        self._thread.join(10)
        return self.summary()


class LagReceiver(_Lags):
    def __init__(self) -> None:
        super().__init__()
        self.url = ""
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True, name="webhook-receiver")

    async def _handle(self, request: web.Request) -> web.Response:
        self.received(json.loads(await request.read()))
        return web.Response(status=204)

    def _serve(self) -> None:
        self._loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
        self._ready.set()
        self._loop.run_forever()

    def start(self) -> "LagReceiver":
        self._thread.start()
        self._ready.wait(10)
        return self
