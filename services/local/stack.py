"""The embedded default: local PostgreSQL and Kafka unless the settings point at existing servers.

`slotledger up` records the endpoints in <state_dir>/stack.json so that other CLI commands run in the same
checkout find the running stack without flags.
"""
from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from services.local.kafka import LocalKafka
from services.local.postgres import LocalPostgres
from services.settings import Settings

TOPICS = ("commands", "command-results", "commands.dlq", "events")


def stack_file(settings: Settings) -> Path:
    return settings.state_dir / "stack.json"


@dataclass
class LocalStack:
    settings: Settings
    postgres: LocalPostgres | None = None
    kafka: LocalKafka | None = None
    started: list[str] = field(default_factory=list)

    def start(self) -> Settings:
        """Start what is not configured; return settings pointing at every server."""
        state = self.settings.state_dir.resolve()
        updates: dict[str, object] = {}
        try:
            if not self.settings.database_url:
                self.postgres = LocalPostgres(state / "postgres").start()
                updates["database_url"] = self.postgres.url
                self.started.append("postgres")
            if not self.settings.kafka_bootstrap:
                self.kafka = LocalKafka(state / "kafka").start(fresh=False)
                updates["kafka_bootstrap"] = self.kafka.bootstrap
                self.started.append("kafka")
        except BaseException:
            self.stop()
            raise
        return self.settings.model_copy(update=updates)

    async def supervise(self, every: float = 1.0) -> None:
        """Restart a local server that died (a crash, an OOM kill), on the same port and data, saying so."""
        from services.logs import log

        while True:
            await asyncio.sleep(every)
            for name, server, restart in (
                    ("PostgreSQL", self.postgres, lambda: self.postgres.start()),
                    ("Kafka broker", self.kafka, lambda: self.kafka.start(fresh=False))):
                if server is None or server.process is None or server.process.poll() is None:
                    continue
                code = server.process.returncode
                log.warning(f"local {name} exited; restarting it", exit_code=code)
                try:
                    await asyncio.to_thread(restart)
                except Exception as exc:  # try again on the next round
                    log.error(f"local {name} did not restart; trying again", error=repr(exc))

    def stop(self) -> None:
        if self.kafka:
            self.kafka.stop()
        if self.postgres:
            self.postgres.stop()
        stack_file(self.settings).unlink(missing_ok=True)


def describe(settings: Settings, http_url: str) -> dict:
    return {
        "pid": os.getpid(),
        "http_url": http_url,
        "database_url": settings.database_url,
        "database_schema": settings.database_schema,
        "kafka_bootstrap": settings.kafka_bootstrap,
        "topic_prefix": settings.topic_prefix,
        "topics": {name: settings.topic(name) for name in TOPICS},
    }


def write_stack_file(settings: Settings, info: dict) -> None:
    path = stack_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info, indent=2))


def running_stack(settings: Settings) -> dict | None:
    path = stack_file(settings)
    if not path.exists():
        return None
    info = json.loads(path.read_text())
    try:
        os.kill(info["pid"], 0)
    except (ProcessLookupError, KeyError):
        return None
    return info


def settings_for_cli() -> Settings:
    """Settings from the environment, completed from a running `slotledger up` in this checkout."""
    settings = Settings()
    info = running_stack(settings)
    if info:
        settings = settings.model_copy(update={
            "database_url": settings.database_url or info["database_url"],
            "kafka_bootstrap": settings.kafka_bootstrap or info["kafka_bootstrap"],
        })
    return settings
