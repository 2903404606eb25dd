"""Repeated failed authentication from one client address is answered 429 RATE_LIMITED with Retry-After
(DESIGN §4), with one structured log line when a client starts being refused."""
from __future__ import annotations

import math
import time

import limits
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from domain.errors import DomainError
from services.logs import log


class FailedAuthLimiter:
    def __init__(self, per_minute: int):
        self.item = limits.parse(f"{per_minute}/minute")
        self.limiter = MovingWindowRateLimiter(MemoryStorage())
        self._refusing: dict[str, float] = {}  # client → until when (for one log line per burst)

    def check(self, client: str) -> None:
        """Before verifying a key: refuse a client that failed too often lately."""
        if self.limiter.test(self.item, client):
            self._refusing.pop(client, None)
            return
        reset = self.limiter.get_window_stats(self.item, client).reset_time
        if client not in self._refusing:
            log.warning("refusing a client after repeated failed authentication", client=client,
                        limit=str(self.item), until=round(reset, 1))
        self._refusing[client] = reset
        retry = max(1, math.ceil(reset - time.time()))
        raise DomainError("RATE_LIMITED", "too many failed authentication attempts; retry later",
                          {"retry_after_seconds": retry}, headers={"Retry-After": str(retry)})

    def failed(self, client: str) -> None:
        self.limiter.hit(self.item, client)
