from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob is an environment variable SLOTLEDGER_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="SLOTLEDGER_", extra="ignore")

    database_url: str | None = None  # unset: `up` starts the embedded PostgreSQL
    database_schema: str = "public"
    kafka_bootstrap: str | None = None  # unset: `up` starts a local broker
    topic_prefix: str = "slotledger"
    topic_partitions: int = 8  # for topics the service creates itself; at most this many consumers share commands
    topic_replication: int = 1
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    http_reuse_port: bool = False  # SO_REUSEPORT: set by `serve --workers N`, whose workers share the port
    worker: int = 0  # which of `serve --workers N` this process is (0 runs the once-per-deployment loops)
    workers: int = 1  # N: creates are decided by the worker owning their date (services/routing.py)
    state_dir: Path = Path(".slotledger")  # local stack data and its endpoints file
    log_level: str = "info"
    pool_min_size: int = 2
    pool_max_size: int = 20
    acquire_timeout_seconds: float = 5.0  # waiting for a pooled database connection, at most
    connect_timeout_seconds: float = 5.0  # a new database connection, at most
    statement_timeout_seconds: float = 10.0  # any one statement (the server ends it); then 503 or a loop's retry
    command_retries: int = 8
    ingest_max_batch: int = 2000  # Kafka commands the ingestor fetches and decides together, at most
    ingest_consumers: int = 4  # consumers per process (each its own partitions): some decide while others wait
    relay_batch: int = 2000  # events the relay publishes per produce round and checkpoint, at most
    poll_interval_seconds: float = 1.0  # projector fallback when no NOTIFY arrives
    sweep_interval_seconds: float = 1.0  # how often expired holds are recorded and expired offers passed on
    webhooks_allow_private: bool = False  # endpoints on loopback/private addresses, and http to them
    webhook_secrets_key: str | None = None  # a Fernet key for webhook secrets at rest (else one kept in the DB)
    webhook_timeout_seconds: float = 10.0
    webhook_retry_base_seconds: float = 5.0  # the first retry's delay; doubled each time, with jitter
    webhook_retry_max_seconds: float = 3600.0
    webhook_retry_hours: float = 72.0  # then the delivery is `failed`
    webhook_disable_after_hours: float = 120.0  # an endpoint failing this long is disabled
    auth_failures_per_minute: int = 60  # per client address; then 429 RATE_LIMITED until the window clears
    head_timeout_seconds: float = 10.0  # a request head must arrive within this of its first byte
    body_timeout_seconds: float = 30.0  # a request body must arrive within this
    max_connections: int = 1000  # open HTTP connections per gateway process; more are closed at once

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}.{name}"
