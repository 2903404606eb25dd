"""What the gateway needs from the rest of the service, and nothing more: the gateway speaks HTTP and hands
commands and queries to these."""
from __future__ import annotations

from typing import Protocol

import asyncpg

from services.handler import CommandHandler
from services.keys import KeyRing


class Backend(Protocol):
    pool: asyncpg.Pool  # read models are queried on it
    handler: CommandHandler
    keys: KeyRing

    async def readiness(self) -> dict: ...
