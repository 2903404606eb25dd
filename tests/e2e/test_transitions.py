"""DESIGN §3's transition table, row by row, on all three entry points (/v1 PATCH, SaludYa's PUT, Kafka), and
the explicit status given with a reschedule."""
from __future__ import annotations

import json

import pytest

from tests.builders import create_body
from tests.e2e.conftest import local_at, local_date, new_org, setup_clinic
from tests.e2e.kafka import command, encoded, publish, read_topic, results_by_command

STATUSES = ("confirmed", "rescheduled", "in_progress", "completed", "cancelled", "no_show")
ALLOWED = {
    "confirmed": {"confirmed", "rescheduled", "in_progress", "completed", "cancelled", "no_show"},
    "rescheduled": {"confirmed", "rescheduled", "in_progress", "completed", "cancelled", "no_show"},
    "in_progress": {"in_progress", "completed"},  # the status it has: a 200 no-op
    "completed": set(), "cancelled": set(), "no_show": set(),
}
SALUDYA_WORD = {"rescheduled": "scheduled"}


async def _appointments_in_every_status(api) -> dict[tuple[str, str], str]:
    """One appointment per (from, to) pair, brought to `from` over /v1."""
    ids = {}
    for n, (start, to) in enumerate((s, t) for s in STATUSES for t in STATUSES):
        days = 4 + n % 6
        status, a = await api.post("/v1/appointments", create_body(
            local_at(api, days, f"{9 + n // 6 % 3:02d}:{n % 4 * 15:02d}"), f"+1444{n:06d}"))
        assert status == 201, a
        path = f"/v1/appointments/{a['appointment_id']}"
        steps = {"confirmed": [], "rescheduled": [{"appointment_date": local_at(api, days, "17:00")}],
                 "completed": [{"status": "in_progress"}, {"status": "completed"}]}.get(start, [{"status": start}])
        for step in steps:
            status, b = await api.patch(path, step)
            assert status == 200, (start, b)
        ids[(start, to)] = a["appointment_id"]
    return ids


def _request(entry: str, api, to: str, n: int) -> dict:
    if to == "rescheduled":
        if entry == "saludya":
            return {"date": local_date(api, 4 + n % 6), "time": "18:30"}
        return {"appointment_date": local_at(api, 4 + n % 6, "18:30")}
    body = {"status": to}
    if entry == "saludya" and to == "completed":
        body["diagnosis"] = "Control"
    if entry == "saludya" and to == "cancelled":
        body["cancellation_reason"] = "Emergencia familiar"
    return body


def _check(entry: str, start: str, to: str, status: int, body: dict) -> None:
    if to in ALLOWED[start] or start == to:  # the same terminal status again: 200, unchanged
        got = body["status"] if entry == "saludya" else body["data"]["status"]
        assert (status, got) == (200, SALUDYA_WORD.get(to, to) if entry == "saludya" else to), (entry, start, to, body)
        return
    assert (status, body["error"]["code"]) == (422, "INVALID_STATE_TRANSITION"), (entry, start, to, body)
    if entry == "saludya":  # SaludYa has no such status: its clients never see the word
        assert "rescheduled" not in json.dumps(body), body


@pytest.mark.parametrize("entry", ["v1", "saludya"])
async def test_every_row_of_the_transition_table_over_http(runtime, http, entry):
    api = await setup_clinic(await new_org(runtime, http))
    ids = await _appointments_in_every_status(api)
    for n, ((start, to), appointment_id) in enumerate(ids.items()):
        if entry == "v1":
            status, body = await api.patch(f"/v1/appointments/{appointment_id}", _request(entry, api, to, n))
        else:
            status, body = await api.call("PUT", f"/api/appointments/{appointment_id}",
                                          json=_request(entry, api, to, n))
        _check(entry, start, to, status, body)


async def test_every_row_of_the_transition_table_over_kafka(kafka_runtime, http, kafka_bootstrap):
    rt = kafka_runtime
    api = await setup_clinic(await new_org(rt, http))
    ids = await _appointments_in_every_status(api)
    commands = {pair: command(api.org_id, "update_appointment", _request("kafka", api, pair[1], n),
                              appointment_id=appointment_id)
                for n, (pair, appointment_id) in enumerate(ids.items())}
    await publish(kafka_bootstrap, rt.settings.topic("commands"),
                  [encoded(c, c["appointment_id"]) for c in commands.values()])
    wanted = {c["command_id"] for c in commands.values()}
    records = await read_topic(kafka_bootstrap, rt.settings.topic("command-results"),
                               lambda recs: wanted <= set(results_by_command(recs)), 90)
    results = results_by_command(records)
    for (start, to), cmd in commands.items():
        result = results[cmd["command_id"]][0]
        _check("kafka", start, to, result["status"], result)


async def test_saludya_scheduled_and_confirmed(runtime, http):
    api = await setup_clinic(await new_org(runtime, http))
    status, a = await api.post("/v1/appointments", create_body(local_at(api, 5, "09:30")))
    path = f"/api/appointments/{a['appointment_id']}"
    status, b = await api.call("PUT", path, json={"status": "scheduled"})  # a confirmed one cannot go back
    assert (status, b["error"]["code"]) == (422, "INVALID_STATE_TRANSITION")
    assert b["error"]["message"] == "Cannot change status from 'confirmed' to 'scheduled'"
    status, b = await api.call("PUT", path, json={"time": "10:15"})
    assert (status, b["status"]) == (200, "scheduled")  # rescheduled, in SaludYa's words
    status, b = await api.call("PUT", path, json={"status": "scheduled"})
    assert (status, b["status"]) == (200, "scheduled")  # what it already is
    status, b = await api.call("PUT", path, json={"status": "confirmed"})  # scheduled → confirmed
    assert (status, b["status"]) == (200, "confirmed")


async def test_a_status_given_with_a_new_date_wins_and_both_apply_or_neither(runtime, http):
    api = await setup_clinic(await new_org(runtime, http), max_slots=1)
    made = []
    for i, hhmm in enumerate(("09:00", "09:30", "10:00")):
        status, a = await api.post("/v1/appointments", create_body(local_at(api, 5 + i, hhmm), f"+1333{i}"))
        made.append(a["data"])
    first, second, third = made
    status, b = await api.patch(f"/v1/appointments/{first['appointment_id']}",
                                {"appointment_date": local_at(api, 9, "17:30"), "status": "completed"})
    assert (status, b["data"]["status"], b["data"]["date"]) == (200, "completed", local_date(api, 9)), b
    assert b["data"]["completed_at"] is not None
    # The target had one place: the completed appointment holds it (only a cancel frees a place).
    status, full = await api.post("/v1/appointments", create_body(local_at(api, 9, "18:00"), "+13339"))
    assert (status, full["error"]["code"]) == (409, "SLOT_FULL")
    status, b = await api.patch(f"/v1/appointments/{second['appointment_id']}",
                                {"appointment_date": local_at(api, 10, "17:30"), "status": "cancelled"})
    assert (status, b["data"]["status"], b["data"]["date"]) == (200, "cancelled", local_date(api, 10)), b
    for days, hhmm in ((6, "09:45"), (10, "18:00")):  # the place it left and the place it cancelled: both free
        status, again = await api.post("/v1/appointments", create_body(local_at(api, days, hhmm), "+13338"))
        assert status == 201, again
        await api.patch(f"/v1/appointments/{again['appointment_id']}", {"status": "cancelled"})
    # A refused status leaves the date unmoved: neither applies.
    await api.patch("/v1/appointment-config", {"allow_cancellation": False})
    status, b = await api.patch(f"/v1/appointments/{third['appointment_id']}",
                                {"appointment_date": local_at(api, 11, "17:30"), "status": "cancelled"})
    assert (status, b["error"]["code"]) == (409, "CANCELLATION_NOT_ALLOWED")
    status, b = await api.get(f"/v1/appointments/{third['appointment_id']}")
    assert (b["data"]["date"], b["data"]["status"], b["data"]["version"]) == (third["date"], "confirmed", 1)
