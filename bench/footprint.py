"""What one create writes: creates decided and committed by the ingestor's decide path (as bench.decide runs them,
without the broker) against a durable local PostgreSQL, and the write-ahead log they made read back with
pg_walinspect, per create: its bytes and records by kind, and by table or index. The physical floor under the
Kafka and HTTP figures: every row and index entry here is CPU in PostgreSQL on every create, whatever the Python.

  python -m bench.footprint [--commands 10000] [--warm 10000]
"""
from __future__ import annotations

import argparse

from bench.decide import commands, decide
from bench.run import CEILING_INSERT, CEILING_TABLE, postgres_alone, set_up_clinic
from services.cli import _run_service
from services.ingestor import Ingestor
from services.runtime import Runtime

# WAL records by the relation their first block belongs to (a record's block reference names its relfilenode).
_BY_RELATION = """
SELECT coalesce(c.relname, w.relfilenode::text) AS relation, count(*) AS records, sum(w.record_length) AS bytes
FROM (SELECT (regexp_match(block_ref, 'rel \\d+/\\d+/(\\d+)'))[1]::oid AS relfilenode, record_length
      FROM pg_get_wal_records_info($1, $2)) AS w
LEFT JOIN pg_class c ON c.relfilenode = w.relfilenode
GROUP BY 1 ORDER BY 3 DESC"""
_BY_KIND = ('SELECT "resource_manager/record_type" AS kind, count, combined_size AS bytes'
            " FROM pg_get_wal_stats($1, $2, true) WHERE count > 0 ORDER BY combined_size DESC")


async def _pgbench_transaction(conn) -> float:
    """WAL bytes of the transaction pgbench runs as the bench's ceiling, one row and one index entry each."""
    await conn.execute(CEILING_TABLE)
    start = await conn.fetchval("SELECT pg_current_wal_insert_lsn()")
    for _ in range(1000):
        await conn.execute(CEILING_INSERT)
    end = await conn.fetchval("SELECT pg_current_wal_insert_lsn()")
    return sum(k["bytes"] for k in await conn.fetch(_BY_KIND, start, end)) / 1000


async def main(count: int, warm: int) -> None:
    with postgres_alone("slotledger-footprint-") as (pg, settings):
        clinic = await set_up_clinic(settings)
        runtime = Runtime(settings, components=())
        await runtime.start()
        try:
            async with runtime.pool.acquire() as conn:
                await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
            ingestor = Ingestor(settings, runtime.pool, runtime.handler)
            await decide(ingestor, commands(clinic, 0, warm), 2000)  # days, caches and plans warm
            async with runtime.pool.acquire() as conn:
                start = await conn.fetchval("SELECT pg_current_wal_insert_lsn()")
            await decide(ingestor, commands(clinic, 1, count), 2000)
            async with runtime.pool.acquire() as conn:
                end = await conn.fetchval("SELECT pg_current_wal_insert_lsn()")
                kinds = await conn.fetch(_BY_KIND, start, end)
                relations = await conn.fetch(_BY_RELATION, start, end)
                ceiling = await _pgbench_transaction(conn)
        finally:
            await runtime.stop()
    total = sum(k["bytes"] for k in kinds)
    print(f"{count:,} creates (after {warm:,} to warm up): {total / count:,.0f} bytes of WAL per create;"
          f" the bench's pgbench transaction (a one-row INSERT) writes {ceiling:,.0f}")
    print(f"{'by kind':40} {'records':>9} {'bytes':>7}  (per create)")
    for k in kinds:
        print(f"  {k['kind']:38} {k['count'] / count:9.2f} {k['bytes'] / count:7.0f}")
    print(f"{'by table or index':40} {'records':>9} {'bytes':>7}")
    for r in relations:
        if r["records"] >= count / 100:
            print(f"  {r['relation']:38} {r['records'] / count:9.2f} {r['bytes'] / count:7.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commands", type=int, default=10_000)
    parser.add_argument("--warm", type=int, default=10_000)
    args = parser.parse_args()
    _run_service(main(args.commands, args.warm))
