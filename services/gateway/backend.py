"""What the gateway needs from the rest of the service, and nothing more: the gateway speaks HTTP and hands
commands and queries to these."""
from __future__ import annotations

from typing import Protocol

import asyncpg

from services.handler import CommandHandler
from services.gateway.guard import FailedAuthLimiter
from services.keys import KeyRing
from services.settings import Settings
from services.webhooks import Subscriptions


class Backend(Protocol):
    settings: Settings
    pool: asyncpg.Pool  # read models are queried on it
    handler: CommandHandler
    keys: KeyRing
    auth_limiter: FailedAuthLimiter
    webhooks: Subscriptions

    async def readiness(self) -> dict: ...
