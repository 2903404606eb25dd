"""Background loops (projectors, relay, ingestor, log waker) that never die or hang silently: each step's
failure is logged once per streak, backed off and retried, and every loop's state is visible in /readyz and
/metrics, so a stuck one shows within seconds (DESIGN §4, issue 13)."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from prometheus_client import Gauge

from services.logs import log

LOOP_UP = Gauge("slotledger_loop_healthy", "1 while the loop's last step succeeded", ["loop"])
LOOP_LAST_OK = Gauge("slotledger_loop_last_success_timestamp_seconds", "When the loop last succeeded", ["loop"])


@dataclass
class LoopHealth:
    name: str
    failures: int = 0  # in the current streak
    last_ok: float | None = None
    failing_since: float | None = None
    last_error: str | None = None
    _backoff: float = field(default=0.1, repr=False)

    def ok(self) -> None:
        if self.failing_since is not None:
            log.info("loop recovered", loop=self.name, failures=self.failures,
                     seconds=round(time.monotonic() - self.failing_since, 1))
        self.failures, self.failing_since, self.last_error, self._backoff = 0, None, None, 0.1
        self.last_ok = time.monotonic()
        LOOP_UP.labels(self.name).set(1)
        LOOP_LAST_OK.labels(self.name).set(time.time())

    async def failed(self, exc: BaseException) -> None:
        """Log (the first of a streak with its traceback), then wait, longer each time (at most 5 s)."""
        if self.failing_since is None:
            self.failing_since = time.monotonic()
            log.warning("loop step failed; retrying", loop=self.name, error=repr(exc), exc_info=exc)
        self.failures += 1
        self.last_error = repr(exc)[:300]
        LOOP_UP.labels(self.name).set(0)
        await asyncio.sleep(self._backoff)
        self._backoff = min(self._backoff * 2, 5.0)

    def state(self) -> dict[str, Any]:
        now = time.monotonic()
        return {"ok": self.failing_since is None,
                "seconds_since_success": None if self.last_ok is None else round(now - self.last_ok, 1),
                "failures": self.failures, **({"error": self.last_error} if self.last_error else {})}


LOOPS: dict[str, LoopHealth] = {}


def health(name: str) -> LoopHealth:
    return LOOPS.setdefault(name, LoopHealth(name))


async def forever(name: str, step: Callable[[], Awaitable[int]], idle: Callable[[], Awaitable[None]]) -> None:
    """Run `step` again and again: at once while it reports work done, after `idle()` when it did none, and
    after a growing backoff when it failed (logged once per streak)."""
    loop = health(name)
    while True:
        try:
            done = await step()
            loop.ok()
            if done:
                continue
        except Exception as exc:  # never dies: backs off and tries again
            await loop.failed(exc)
            continue
        await idle()
