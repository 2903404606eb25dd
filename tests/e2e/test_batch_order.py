"""A batch of commands decided together (the ingestor's) is appended stream by stream, one append per
window-day; what it shows the readers must still follow the order its commands were decided in."""
from __future__ import annotations

import json
from types import SimpleNamespace

from services.ingestor import Ingestor
from services.projector import rebuild
from tests.builders import create_body
from tests.e2e.conftest import local_at, local_date, new_org, setup_clinic
from tests.e2e.kafka import command


async def test_an_appointment_moved_away_and_back_in_one_batch_is_read_where_its_last_move_left_it(runtime, http):
    """Days 3 → 4 → 5 → 3 in one batch: day 3's stream holds the first move's departure and the last move's
    arrival. Appended or projected stream by stream, the arrival on day 3 would come before the moves to 4 and
    5, and the read models (live, or rebuilt from the log) would show the appointment on day 5 while its last
    result says day 3 (seen after a PostgreSQL outage, when commands piled up into one batch)."""
    api = await setup_clinic(await new_org(runtime, http), max_slots=10)
    status, created = await api.post("/v1/appointments", create_body(local_at(api, 3, "09:30"), "+15550001111"))
    assert status == 201
    appointment_id = created["appointment_id"]
    ingestor = Ingestor(runtime.settings, runtime.pool, runtime.handler)
    moves = [command(api.org_id, "update_appointment", {"appointment_date": local_at(api, d, "09:30")},
                     appointment_id=appointment_id) for d in (4, 5, 3)]
    items = await ingestor._decide_batch([SimpleNamespace(value=json.dumps(m).encode()) for m in moves])
    results = [item.result for item in items]
    assert [r["ok"] for r in results] == [True] * 3, results
    assert [r["data"]["date"] for r in results] == [local_date(api, d) for d in (4, 5, 3)]

    async with runtime.pool.acquire() as conn:  # the log holds the moves in the order they were decided
        arrivals = await conn.fetch(
            "SELECT data->'appointment'->>'date' AS day FROM events WHERE event_type = 'appointment.rescheduled'"
            " AND data->'appointment'->>'appointment_id' = $1 ORDER BY global_position", appointment_id)
    assert [r["day"] for r in arrivals] == [local_date(api, d) for d in (4, 5, 3)]

    for read_models in ("as written", "rebuilt from the log"):
        if read_models == "rebuilt from the log":
            await rebuild(runtime.pool, runtime.store)
        status, got = await api.get(f"/v1/appointments/{appointment_id}")
        assert status == 200 and got["data"]["date"] == local_date(api, 3), read_models
        booked = {}
        for d in (3, 4, 5):
            status, body = await api.get(f"/v1/appointment-slots/availability?date={local_date(api, d)}")
            booked[d] = sum(row["booked"] for row in body["data"])
        assert booked == {3: 1, 4: 0, 5: 0}, read_models
