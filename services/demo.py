"""Demo data for `slotledger up --demo`."""
from __future__ import annotations


async def seed_demo(runtime) -> dict:
    # The demo clinic needs the booking engine (services, branches, windows, keys); it is seeded there.
    return {"note": "no demo data yet"}
