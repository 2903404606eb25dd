"""schemathesis holds the gateway to its own OpenAPI document: every operation, generated valid and invalid
requests, with a key of every scope, bounded to about a minute. It fails on any server error, any response
that breaks the document, and any accepted invalid request.

Allowed, each for a stated reason (FUZZ_EXCLUDED_CHECKS):
- positive_data_acceptance: a request valid by the schema may still be refused by a documented business rule
  (SLOT_FULL, OUTSIDE_AVAILABILITY, NOT_FOUND for an id the generator made up, CONFLICT for a duplicate name).
- use_after_free, ensure_resource_availability: stateful checks that read a refusal of the above kind as a
  lost resource.
"""
from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from tests.e2e.conftest import setup_clinic, new_org

FUZZ_EXCLUDED_CHECKS = "positive_data_acceptance,use_after_free,ensure_resource_availability"
EXAMPLES = int(os.environ.get("SLOTLEDGER_FUZZ_EXAMPLES", "40"))  # about half a minute here


async def test_every_operation_holds_to_the_openapi_document(runtime, http, tmp_path):
    api = await setup_clinic(await new_org(runtime, http))
    st = Path(sys.executable).with_name("st")
    report = tmp_path / "schemathesis.txt"
    proc = await asyncio.create_subprocess_exec(
        str(st), "run", f"{api.base}/openapi.json", "--checks", "all", "--exclude-checks", FUZZ_EXCLUDED_CHECKS,
        "--header", f"Authorization: Bearer {api.key}", "--max-examples", str(EXAMPLES), "--seed", "20261122",
        "--generation-deterministic", "--phases", "examples,coverage,fuzzing", "--workers", "2",
        "--request-timeout", "10", "--no-color",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 240)
    except TimeoutError:
        proc.kill()
        raise
    text = out.decode(errors="replace")
    report.write_text(text)
    print(text[-6000:])
    assert proc.returncode == 0, text[-12000:]
    # after all that, the service still answers and the org still books
    status, ready = await api.get("/v1/services")
    assert status == 200 and ready["data"]
