"""The `slotledger` command."""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import signal
import sys
from typing import Awaitable, Callable

from services.local.kafka import MissingToolError
from services.local.stack import LocalStack, describe, running_stack, settings_for_cli, write_stack_file
from services.logs import configure, log
from services.runtime import COMPONENTS, Runtime
from services.settings import Settings


async def _serve(settings: Settings, components: tuple[str, ...],
                 on_ready: Callable[[Runtime], Awaitable[None]] | None = None) -> None:
    runtime = Runtime(settings, components)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await runtime.start()
        if on_ready is not None:
            await on_ready(runtime)
        _collect_cycles_rarely()
        await stop.wait()
        log.info("stopping")
    finally:
        await runtime.stop()


def _collect_cycles_rarely() -> None:
    """What startup built (modules, schemas, catalogs) lives as long as the process: out of the cycle collector's
    sight. Its youngest generation waits for 10,000 new objects, not 700: a Kafka batch or a burst of HTTP
    creates makes hundreds of thousands, nearly none in cycles, and the default thresholds spent 15-20% of
    the ingestor's CPU collecting them (and walking the cached window-days over and over). The middle
    generation waits for 100 young collections, not 10: what a young collection finds alive is mostly a batch
    in hand, gone by refcount within a second, so a rarer middle collection walks only what truly stayed (the
    ingestor's collections fell from 50 to 18 µs per command, its longest pauses unchanged)."""
    gc.freeze()
    gc.set_threshold(10_000, 100, 10)


def _run_service(main: Awaitable[None]) -> None:
    """The service's event loop is uvloop where it is installed: its sockets and scheduling are several times
    cheaper than asyncio's own loop, and the gateway, the ingestor and asyncpg all spend their time there."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


def cmd_up(args: argparse.Namespace) -> int:
    settings = Settings()
    if running_stack(settings):
        print(f"slotledger: a stack is already running from {settings.state_dir}/stack.json "
              "(see `slotledger status`)", file=sys.stderr)
        return 1
    stack = LocalStack(settings)
    try:
        settings = stack.start()
    except MissingToolError as exc:
        print(exc, file=sys.stderr)
        return 1

    async def ready(runtime: Runtime) -> None:
        info = describe(settings, runtime.http_url)
        if args.demo:
            from services.demo import seed_demo

            info["demo"] = await seed_demo(runtime)
        write_stack_file(settings, info)
        supervisor = asyncio.get_running_loop().create_task(stack.supervise(), name="local-servers")
        runtime.on_stop(supervisor.cancel)
        print(json.dumps(info, indent=2), flush=True)
        print(f"slotledger is up: {runtime.http_url}/readyz (Ctrl-C stops everything)", flush=True)

    try:
        _run_service(_serve(settings, COMPONENTS, ready))
    finally:
        stack.stop()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    settings = Settings()
    if not settings.database_url:
        print("slotledger serve: set SLOTLEDGER_DATABASE_URL (or use `slotledger up`)", file=sys.stderr)
        return 1
    components = tuple(c.strip() for c in args.only.split(",")) if args.only else COMPONENTS
    unknown = set(components) - set(COMPONENTS)
    if unknown:
        print(f"slotledger serve: unknown component(s) {sorted(unknown)}; choose from {COMPONENTS}", file=sys.stderr)
        return 2
    if args.workers < 1:
        print("slotledger serve: --workers must be at least 1", file=sys.stderr)
        return 2
    if args.workers > 1:
        from services import workers
        from services.local.ports import free_port

        return workers.run(args.workers, components, settings.http_port or free_port())
    _run_service(_serve(settings, components))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    info = running_stack(Settings())
    if info is None:
        print("slotledger: no stack is running from this checkout (start one with `make run`)", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key in ("http_url", "database_url", "kafka_bootstrap"):
            print(f"{key}: {info[key]}")
        for name, topic in info["topics"].items():
            print(f"topic {name}: {topic}")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    import asyncpg

    from services.store.migrate import migrate

    settings = _require_database()

    async def run() -> list[str]:
        from services.projector import rebuild_after_migrations
        from services.store.eventstore import EventStore
        from services.store.pool import create_pool

        conn = await asyncpg.connect(settings.database_url)
        try:
            applied = await migrate(conn, settings.database_schema)
        finally:
            await conn.close()
        pool = await create_pool(settings.database_url, settings.database_schema, 1, 2)
        try:
            await rebuild_after_migrations(pool, EventStore(pool, settings.database_schema), applied)
        finally:
            await pool.close()
        return applied

    applied = asyncio.run(run())
    print("applied: " + (", ".join(applied) if applied else "nothing, already up to date"))
    return 0


def _with_runtime(work):
    """Run `work(runtime)` against the configured (or locally running) database, without serving."""
    settings = _require_database()

    async def run():
        runtime = Runtime(settings, components=())
        await runtime.start()
        try:
            return await work(runtime)
        finally:
            await runtime.stop()

    return asyncio.run(run())


def cmd_org_create(args: argparse.Namespace) -> int:
    from domain.errors import DomainError

    async def work(runtime: Runtime):
        return await runtime.handler.create_org(args.name, args.timezone)

    try:
        catalog = _with_runtime(work)
    except DomainError as exc:
        print(f"slotledger: {exc.message}", file=sys.stderr)
        return 2
    info = {"org_id": catalog.org_id, "name": catalog.name, "timezone": catalog.settings.timezone}
    print(json.dumps(info) if args.json else f"created org {info['org_id']} ({info['name']}, {info['timezone']})")
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    from services.keys import create_key, parse_scopes

    try:
        scopes = parse_scopes(args.scopes)
    except ValueError as exc:
        print(f"slotledger: {exc}", file=sys.stderr)
        return 2

    async def work(runtime: Runtime):
        async with runtime.pool.acquire() as conn:
            return await create_key(conn, args.org, scopes, args.name)

    try:
        key = _with_runtime(work)
    except (LookupError, ValueError) as exc:
        print(f"slotledger: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"org_id": args.org, "api_key": key, "scopes": scopes}))
    else:
        print(f"{key}\n(scopes: {', '.join(scopes)}; shown once: only its hash is stored)")
    return 0


def cmd_projections_rebuild(args: argparse.Namespace) -> int:
    from projections.registry import all_projectors
    from services.projector import rebuild

    known = [p.name for p in all_projectors()]
    if args.name and args.name not in known:
        print(f"slotledger: unknown projection {args.name!r}; choose from {', '.join(known)}", file=sys.stderr)
        return 2

    async def work(runtime: Runtime):
        return await rebuild(runtime.pool, runtime.store, [args.name] if args.name else None)

    report = _with_runtime(work)
    for name, result in report.items():
        rows = ", ".join(f"{table}: {count}" for table, count in result["rows"].items())
        print(f"rebuilt {name}: {result['events']} events replayed; rows {rows}")
    return 0


def cmd_events_tail(args: argparse.Namespace) -> int:
    from services.tail import tail

    settings = settings_for_cli()
    if not settings.kafka_bootstrap:
        print("slotledger: no Kafka: set SLOTLEDGER_KAFKA_BOOTSTRAP or start `slotledger up` here", file=sys.stderr)
        return 1
    return asyncio.run(tail(settings, args.from_beginning, args.type or [], args.max, args.json, sys.stdout))


def cmd_schemas_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from schemas.export import OUT, export

    changed = export(Path(args.dir) if args.dir else OUT)
    print("\n".join(f"wrote {path}" for path in changed) or "schemas are up to date")
    return 0


def _require_database() -> Settings:
    settings = settings_for_cli()
    if not settings.database_url:
        raise SystemExit("slotledger: no database: set SLOTLEDGER_DATABASE_URL or start `slotledger up` here")
    return settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slotledger", description="Event-sourced appointment booking engine")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run everything on local PostgreSQL and Kafka (the embedded default)")
    up.add_argument("--demo", action="store_true", help="seed a demo clinic and print an API key")
    up.set_defaults(func=cmd_up)
    serve = sub.add_parser("serve", help="run against existing servers (production)")
    serve.add_argument("--only", help=f"comma-separated subset of {','.join(COMPONENTS)}")
    serve.add_argument("--workers", type=int, default=1, help="processes sharing the HTTP port and the Kafka "
                       "consumer group (default 1); the once-per-deployment loops run in the first")
    serve.set_defaults(func=cmd_serve)
    status = sub.add_parser("status", help="the running local stack's endpoints")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=cmd_migrate)
    org = sub.add_parser("org", help="organizations").add_subparsers(dest="action", required=True)
    org_create = org.add_parser("create", help="create an organization")
    org_create.add_argument("--name", required=True)
    org_create.add_argument("--timezone", required=True, help="IANA timezone, e.g. Asia/Kolkata")
    org_create.add_argument("--json", action="store_true")
    org_create.set_defaults(func=cmd_org_create)
    keys = sub.add_parser("keys", help="API keys").add_subparsers(dest="action", required=True)
    keys_create = keys.add_parser("create", help="create an API key (printed once; stored hashed)")
    keys_create.add_argument("--org", required=True)
    keys_create.add_argument("--scopes", required=True, help="comma-separated scopes, or 'all'")
    keys_create.add_argument("--name")
    keys_create.add_argument("--json", action="store_true")
    keys_create.set_defaults(func=cmd_keys_create)
    projections = sub.add_parser("projections", help="read models").add_subparsers(dest="action", required=True)
    rebuild = projections.add_parser("rebuild", help="replay the log into read models")
    rebuild.add_argument("name", nargs="?", help="one projection (default: all)")
    rebuild.set_defaults(func=cmd_projections_rebuild)
    events = sub.add_parser("events", help="the events topic").add_subparsers(dest="action", required=True)
    events_tail = events.add_parser("tail", help="print events from <prefix>.events, one line each")
    events_tail.add_argument("--from-beginning", action="store_true", help="start at the oldest event, not the newest")
    events_tail.add_argument("--type", action="append", metavar="T",
                             help="only this type, e.g. appointment.booked or appointment (repeatable)")
    events_tail.add_argument("--max", type=int, metavar="N", help="stop after N events")
    events_tail.add_argument("--json", action="store_true", help="print each CloudEvent as JSON")
    events_tail.set_defaults(func=cmd_events_tail)
    schemas = sub.add_parser("schemas", help="JSON Schemas for Kafka consumers").add_subparsers(dest="action",
                                                                                                required=True)
    export = schemas.add_parser("export", help="regenerate schemas/json from the models")
    export.add_argument("dir", nargs="?", help="write here instead of the package's schemas/json")
    export.set_defaults(func=cmd_schemas_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure(Settings().log_level)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
