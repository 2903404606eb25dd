"""The HTTP API against the real stack: every route, the documented error codes, concurrency."""
from __future__ import annotations

import asyncio

import pytest

from services.projector import rebuild
from tests.builders import create_body
from tests.e2e.conftest import key_with, local_at, local_date, new_org, setup_clinic


def body(api, days=3, hhmm="09:30", phone="+919840000001", **extra):
    return create_body(local_at(api, days, hhmm), phone, **extra)


async def test_seed_example_create_update_cancel(api):
    # HuskyVoice's own example bodies, with the date moved into the future and our branch id.
    status, created = await api.post("/v1/appointments", {
        "appointment_type": "General Checkup", "appointment_date": local_at(api, 5, "09:30"),
        "patient_name": "Aadhi", "parent_phone": "+919840XXXXXX", "session": "Morning",
        "branch_id": api.ids["branch"]})
    assert status == 201 and created["success"] is True and created["token"] is None
    assert set(created["data"]) >= {"appointment_id", "appointment_type", "branch_id", "date", "session", "batch",
                                    "token", "patient_name", "parent_phone", "assigned_doctor", "status",
                                    "external_reference_id", "created_at", "updated_at"}
    appointment_id = created["appointment_id"]
    status, updated = await api.patch(f"/v1/appointments/{appointment_id}",
                                      {"assigned_doctor": "Dr. Priya Sharma", "notes": "Patient requested morning slot"})
    assert status == 200 and updated["data"]["assigned_doctor"] == "Dr. Priya Sharma"
    assert updated["data"]["status"] == "confirmed"
    status, cancelled = await api.patch(f"/v1/appointments/{appointment_id}", {"status": "cancelled"})
    assert status == 200 and cancelled["data"]["status"] == "cancelled"
    status, again = await api.patch(f"/v1/appointments/{appointment_id}", {"status": "cancelled"})
    assert status == 200 and again["data"]["updated_at"] == cancelled["data"]["updated_at"]
    pos = cancelled["data"]["position"]
    status, got = await api.get(f"/v1/appointments/{appointment_id}", headers={"X-Min-Position": str(pos)})
    assert status == 200 and got["data"]["status"] == "cancelled"  # never deleted
    status, found = await api.get(f"/v1/appointments?status=cancelled&min_position={pos}")
    assert [a["appointment_id"] for a in found["data"]] == [appointment_id]
    status, history = await api.get(f"/v1/appointments/{appointment_id}/history")
    assert [h["type"] for h in history["data"]] == ["appointment.booked", "appointment.details_changed",
                                                    "appointment.status_changed"]
    assert history["data"][1]["changed"] == {"assigned_doctor": "Dr. Priya Sharma",
                                             "notes": "Patient requested morning slot"}


async def test_documented_error_codes(api, runtime):
    async def code(method, path, json=None, **kw):
        status, b = await api.call(method, path, json=json, **kw)
        assert b["success"] is False and set(b["error"]) >= {"code", "message", "details"}, b
        return status, b["error"]["code"], b

    assert (await code("POST", "/v1/appointments", {"patient_name": "x"}))[:2] == (400, "VALIDATION_ERROR")
    _, _, b = await code("POST", "/v1/appointments", {**body(api), "colour": "red"})
    assert b["error"]["details"] == {"colour": "is not a known field"}
    _, _, b = await code("POST", "/v1/appointments", {k: v for k, v in body(api).items() if k != "parent_phone"})
    assert b["error"]["details"] == {"parent_phone": "is required"}
    assert (await code("POST", "/v1/appointments", {**body(api), "appointment_date": local_date(api, 3)}))[:2] == \
        (400, "VALIDATION_ERROR")
    status, b = await api.call("POST", "/v1/appointments", data=b"{not json",
                               headers={"Content-Type": "application/json"})
    assert (status, b["error"]["code"]) == (400, "VALIDATION_ERROR")
    assert (await code("POST", "/v1/appointments", body(api, days=-1)))[:2] == (400, "PAST_APPOINTMENT")
    assert (await code("POST", "/v1/appointments", {**body(api), "appointment_type": "Dentistry"}))[:2] == \
        (422, "INVALID_APPOINTMENT_TYPE")
    assert (await code("POST", "/v1/appointments", {**body(api), "branch_id": "nope"}))[:2] == (404, "NOT_FOUND")
    assert (await code("POST", "/v1/appointments", body(api, hhmm="13:00")))[:2] == (422, "OUTSIDE_AVAILABILITY")
    assert (await code("POST", "/v1/appointments", body(api, days=45)))[:2] == (422, "BEYOND_BOOKING_HORIZON")
    status, _ = await api.patch("/v1/appointment-config", {"min_notice_hours": 100})
    assert status == 200
    assert (await code("POST", "/v1/appointments", body(api, days=2)))[:2] == (422, "INSUFFICIENT_NOTICE")
    await api.patch("/v1/appointment-config", {"min_notice_hours": 2})

    status, first = await api.post("/v1/appointments", body(api))
    assert status == 201
    status, code_, b = await code("POST", "/v1/appointments", body(api, hhmm="17:30"))
    assert (status, code_) == (409, "DUPLICATE_BOOKING")
    assert b["existing_appointment_id"] == first["appointment_id"]

    window = api.ids["windows"][(_weekday(api, 4), "Morning")]
    status, day = await api.patch(f"/v1/schedule-tracking/{window}/{local_date(api, 4)}", {"status": "CLOSED"})
    assert status == 200 and day["data"]["status"] == "CLOSED"
    assert (await code("POST", "/v1/appointments", body(api, days=4)))[:2] == (409, "SLOT_INACTIVE")

    appointment_id = first["appointment_id"]
    status, _ = await api.patch("/v1/appointment-config", {"allow_reschedule": False, "allow_cancellation": False})
    assert (await code("PATCH", f"/v1/appointments/{appointment_id}",
                       {"appointment_date": local_at(api, 5, "09:30")}))[:2] == (409, "RESCHEDULE_NOT_ALLOWED")
    assert (await code("PATCH", f"/v1/appointments/{appointment_id}", {"status": "cancelled"}))[:2] == \
        (409, "CANCELLATION_NOT_ALLOWED")
    await api.patch("/v1/appointment-config", {"allow_reschedule": True, "allow_cancellation": True,
                                               "cancellation_notice_hours": 24 * 10})
    assert (await code("PATCH", f"/v1/appointments/{appointment_id}", {"status": "cancelled"}))[:2] == \
        (409, "CANCELLATION_NOTICE_TOO_SHORT")
    assert (await code("PATCH", f"/v1/appointments/{appointment_id}", {}))[:2] == (400, "VALIDATION_ERROR")
    assert (await code("PATCH", "/v1/appointments/appt_0000000000", {"notes": "x"}))[:2] == (404, "NOT_FOUND")
    await api.patch(f"/v1/appointments/{appointment_id}", {"status": "completed"})
    assert (await code("PATCH", f"/v1/appointments/{appointment_id}", {"status": "confirmed"}))[:2] == \
        (422, "INVALID_STATE_TRANSITION")

    await api.patch("/v1/appointment-config", {"enabled": False})
    assert (await code("POST", "/v1/appointments", body(api, phone="7")))[:2] == (409, "BOOKING_DISABLED")
    await api.patch("/v1/appointment-config", {"enabled": True})

    status, b = await api.get("/v1/no-such-route")
    assert (status, b["error"]["code"]) == (404, "NOT_FOUND")
    assert (await code("GET", "/v1/appointments/appt_0000000000"))[:2] == (404, "NOT_FOUND")


def _weekday(api, days):
    import datetime as dt

    return dt.date.fromisoformat(local_date(api, days)).strftime("%A").lower()


async def test_idempotent_create_by_external_reference(api):
    status, first = await api.post("/v1/appointments", body(api, external_reference_id="crm-1"))
    assert status == 201 and "idempotent" not in first
    status, again = await api.post("/v1/appointments", body(api, external_reference_id="crm-1", hhmm="10:00"))
    assert status == 200 and again["idempotent"] is True
    assert again["appointment_id"] == first["appointment_id"]
    await api.patch(f"/v1/appointments/{first['appointment_id']}", {"status": "cancelled"})
    status, fresh = await api.post("/v1/appointments", body(api, external_reference_id="crm-1"))
    assert status == 201 and fresh["appointment_id"] != first["appointment_id"]
    status, other = await api.post("/v1/appointments", body(api, phone="5550001", hhmm="11:00"))
    assert status == 201 and other["data"]["external_reference_id"] is None
    pos = other["data"]["position"]
    status, found = await api.get(f"/v1/appointments?external_reference_id=crm-1&min_position={pos}")
    assert status == 200
    assert sorted(a["appointment_id"] for a in found["data"]) == sorted([first["appointment_id"],
                                                                        fresh["appointment_id"]])


async def test_config_services_branches_windows(api):
    status, cfg = await api.get("/v1/appointment-config")
    assert status == 200 and cfg["data"]["general"] == {
        "enabled": True, "timezone": "UTC", "buffer_time_minutes": 15, "max_advance_booking_days": 30,
        "min_notice_hours": 2, "allow_reschedule": True, "allow_cancellation": True, "cancellation_notice_hours": 24,
        "prevent_duplicate_bookings": True, "token_numbering": False, "require_cancellation_reason": False,
        "require_diagnosis_on_complete": False, "phone_region": None, "waitlist_offer_minutes": 15}
    status, b = await api.patch("/v1/appointment-config", {"timezone": "Mars/Olympus"})
    assert (status, b["error"]["code"]) == (400, "VALIDATION_ERROR")
    status, services = await api.get("/v1/services")
    assert [s["name"] for s in services["data"]] == ["Follow-up Visit", "General Checkup"]
    status, b = await api.post("/v1/services", {"name": "general checkup"})
    assert status == 409
    status, branches = await api.get("/v1/branches")
    assert [b["branch_id"] for b in branches["data"]] == [api.ids["branch"]]
    status, windows = await api.get(f"/v1/appointment-slots?branch_id={api.ids['branch']}")
    assert status == 200 and len(windows["data"]) == 14
    window = windows["data"][0]["window_id"]
    status, changed = await api.patch(f"/v1/appointment-slots/{window}", {"max_slots": 5, "batch": "ZZ"})
    assert status == 200 and changed["data"]["max_slots"] == 5 and changed["data"]["batch"] == "ZZ"
    status, b = await api.patch(f"/v1/appointment-slots/{window}", {"start_time": "25:00"})
    assert status == 400 and "start_time" in b["error"]["details"]
    status, disabled = await api.post(f"/v1/appointment-slots/{window}/disable")
    assert status == 200 and disabled["data"]["enabled"] is False
    status, b = await api.post("/v1/appointment-slots", {"branch_id": api.ids["branch"], "day_of_week": "funday",
                                                          "session": "Morning", "start_time": "09:00",
                                                          "end_time": "10:00", "max_slots": 1})
    assert status == 400 and "day_of_week" in b["error"]["details"]


async def test_tracking_and_availability_follow_bookings_cancels_and_reschedules(api):
    date3, date4 = local_date(api, 3), local_date(api, 4)
    status, a = await api.post("/v1/appointments", body(api, phone="1"))
    status, b = await api.post("/v1/appointments", body(api, phone="2", appointment_type="Follow-up Visit"))
    pos = b["data"]["position"]
    status, tracking = await api.get(f"/v1/schedule-tracking?date_from={date3}&date_to={date4}&min_position={pos}")
    assert status == 200 and len(tracking["data"]) == 4  # 2 windows × 2 dates, booked or not
    morning3 = next(r for r in tracking["data"] if r["date"] == date3 and r["session"] == "Morning")
    assert morning3["filled_count"] == 2 and morning3["max_slots"] == 20 and morning3["status"] == "OPEN"
    assert morning3["filled_by_service"] == {api.ids["checkup"]: 1, api.ids["follow"]: 1}
    status, avail = await api.get(f"/v1/appointment-slots/availability?date={date3}&appointment_type=General%20Checkup"
                                  f"&session=Morning&min_position={pos}")
    assert [(r["booked"], r["available"]) for r in avail["data"]] == [(1, 19)]
    status, moved = await api.patch(f"/v1/appointments/{a['appointment_id']}",
                                    {"appointment_date": local_at(api, 4, "17:30")})
    assert status == 200 and moved["data"]["status"] == "rescheduled" and moved["data"]["date"] == date4
    status, c = await api.patch(f"/v1/appointments/{b['appointment_id']}", {"status": "cancelled"})
    pos = c["data"]["position"]
    status, tracking = await api.get(f"/v1/schedule-tracking?date_from={date3}&date_to={date4}&min_position={pos}")
    counts = {(r["date"], r["session"]): r["filled_count"] for r in tracking["data"]}
    assert counts == {(date3, "Morning"): 0, (date3, "Evening"): 0, (date4, "Morning"): 0, (date4, "Evening"): 1}
    status, regen = await api.post("/v1/schedule-tracking/regenerate", {"date_from": date3, "date_to": date4})
    assert status == 200 and regen["data"]["records"] == 4 and regen["data"]["corrections"] == []
    status, b = await api.get(f"/v1/schedule-tracking?date_from={date3}&date_to={local_date(api, 200)}")
    assert status == 400


async def test_a_cancelled_booking_frees_its_slot(runtime, http):
    api = await setup_clinic(await new_org(runtime, http), max_slots=1)
    status, a = await api.post("/v1/appointments", body(api, phone="1"))
    assert status == 201
    status, full = await api.post("/v1/appointments", body(api, phone="2"))
    assert (status, full["error"]["code"]) == (409, "SLOT_FULL")
    await api.patch(f"/v1/appointments/{a['appointment_id']}", {"status": "cancelled"})
    status, b = await api.post("/v1/appointments", body(api, phone="2"))
    assert status == 201


async def test_search_paginates_with_a_cursor(api):
    for i in range(7):
        status, last = await api.post("/v1/appointments", body(api, phone=str(i), days=3 + i % 2))
        assert status == 201
    pos = last["data"]["position"]
    seen, cursor = [], None
    while True:
        q = f"/v1/appointments?limit=3&min_position={pos}" + (f"&cursor={cursor}" if cursor else "")
        status, page = await api.get(q)
        assert status == 200 and len(page["data"]) <= 3
        seen += [a["appointment_id"] for a in page["data"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen)) == 7
    status, one = await api.get(f"/v1/appointments?parent_phone=3&date={local_date(api, 4)}")
    assert len(one["data"]) == 1
    status, b = await api.get("/v1/appointments?limit=500")
    assert status == 400 and "limit" in b["error"]["details"]
    status, b = await api.get("/v1/appointments?cursor=garbage")
    assert status == 400


async def test_two_hundred_simultaneous_creates_fill_exactly_twenty(runtime, http):
    api = await setup_clinic(await new_org(runtime, http), max_slots=20)
    results = await asyncio.gather(*(api.post("/v1/appointments", body(api, phone=f"+1555{i:04d}"))
                                     for i in range(200)))
    statuses = [s for s, _ in results]
    assert statuses.count(201) == 20
    assert [b["error"]["code"] for s, b in results if s != 201] == ["SLOT_FULL"] * 180
    last = max(b["data"]["position"] for s, b in results if s == 201)
    date = local_date(api, 3)
    status, tracking = await api.get(f"/v1/schedule-tracking?date_from={date}&date_to={date}&min_position={last}")
    assert next(r for r in tracking["data"] if r["session"] == "Morning")["filled_count"] == 20


async def test_fifty_simultaneous_creates_with_one_reference_make_one_appointment(api):
    results = await asyncio.gather(*(api.post("/v1/appointments", body(api, phone=f"9{i}",
                                                                        external_reference_id="ext-42"))
                                     for i in range(50)))
    assert sorted(s for s, _ in results) == [200] * 49 + [201]
    assert len({b["appointment_id"] for _, b in results}) == 1
    assert sum(1 for _, b in results if b.get("idempotent")) == 49


async def test_fifty_simultaneous_duplicates_make_one_booking(api):
    # Spread over both windows of the date: the duplicate rule holds across window-days too.
    results = await asyncio.gather(*(api.post("/v1/appointments", body(api, hhmm="09:30" if i % 2 else "17:30"))
                                     for i in range(50)))
    assert sorted(s for s, _ in results) == [201] + [409] * 49
    winner = next(b["appointment_id"] for s, b in results if s == 201)
    assert {b["existing_appointment_id"] for s, b in results if s == 409} == {winner}


async def test_dst_window_matching_over_http(runtime, http):
    api = await setup_clinic(await new_org(runtime, http, tz="America/New_York"),
                             windows=(("Morning", "09:00", "11:00", "MA"),))
    await api.patch("/v1/appointment-config", {"max_advance_booking_days": 400})
    # A date in each of EST and EDT within the horizon: 09:30 local books, 08:30 local does not.
    import datetime as dt
    from zoneinfo import ZoneInfo
    tz = ZoneInfo("America/New_York")
    today = dt.datetime.now(tz).date()
    days = [d for d in (today + dt.timedelta(days=n) for n in range(1, 380))]
    winter = next(d for d in days if dt.datetime.combine(d, dt.time(9, 30), tz).utcoffset() == dt.timedelta(hours=-5))
    summer = next(d for d in days if dt.datetime.combine(d, dt.time(9, 30), tz).utcoffset() == dt.timedelta(hours=-4))
    for i, day in enumerate((winter, summer)):
        for wall, expected in (("09:30", 201), ("08:30", 422)):
            when = dt.datetime.combine(day, dt.time.fromisoformat(wall), tz).astimezone(dt.timezone.utc).isoformat()
            status, b = await api.post("/v1/appointments", {"appointment_type": "General Checkup",
                                                             "appointment_date": when, "patient_name": "P",
                                                             "parent_phone": f"{i}{wall}"})
            assert status == expected, b
            if status == 201:
                assert b["data"]["date"] == day.isoformat()


ROUTES = [
    ("GET", "/v1/appointment-config", None, "appointments:read"),
    ("PATCH", "/v1/appointment-config", {"buffer_time_minutes": 10}, "settings:write"),
    ("GET", "/v1/services", None, "appointments:read"),
    ("POST", "/v1/services", {"name": "X"}, "settings:write"),
    ("GET", "/v1/branches", None, "appointments:read"),
    ("POST", "/v1/branches", {"name": "B"}, "settings:write"),
    ("GET", "/v1/appointment-slots", None, "slots:read"),
    ("POST", "/v1/appointment-slots", {}, "slots:write"),
    ("PATCH", "/v1/appointment-slots/{window}", {"max_slots": 3}, "slots:write"),
    ("POST", "/v1/appointment-slots/{window}/disable", None, "slots:write"),
    ("GET", "/v1/appointment-slots/availability?date={date}", None, "slots:read"),
    ("GET", "/v1/schedule-tracking?date_from={date}&date_to={date}", None, "slots:read"),
    ("PATCH", "/v1/schedule-tracking/{window}/{date}", {"status": "CLOSED"}, "slots:write"),
    ("POST", "/v1/schedule-tracking/regenerate", {"date_from": "{date}", "date_to": "{date}"}, "slots:write"),
    ("POST", "/v1/appointments", {}, "appointments:write"),
    ("GET", "/v1/appointments", None, "appointments:read"),
    ("GET", "/v1/appointments/{appt}", None, "appointments:read"),
    ("PATCH", "/v1/appointments/{appt}", {"notes": "n"}, "appointments:write"),
    ("GET", "/v1/appointments/{appt}/history", None, "appointments:read"),
    ("PUT", "/api/appointments/{appt}", {"notes": "n"}, "appointments:write"),
    ("GET", "/v1/doctors", None, "appointments:read"),
    ("POST", "/v1/doctors", {"name": "Dr. Scope"}, "settings:write"),
    ("GET", "/v1/doctors/{doctor}", None, "appointments:read"),
    ("PATCH", "/v1/doctors/{doctor}", {"specialty": "x"}, "settings:write"),
    ("GET", "/v1/patients?phone=%2B919840000001", None, "appointments:read"),
    ("GET", "/v1/patients/{patient}", None, "appointments:read"),
    ("GET", "/v1/patients/{patient}/appointments", None, "appointments:read"),
    ("POST", "/v1/appointment-holds", {}, "appointments:write"),
    ("GET", "/v1/appointment-holds/{hold}", None, "appointments:read"),
    ("DELETE", "/v1/appointment-holds/{hold}", None, "appointments:write"),
    ("POST", "/v1/appointment-holds/{hold}/confirm", {}, "appointments:write"),
    ("POST", "/v1/waitlist", {}, "appointments:write"),
    ("GET", "/v1/waitlist?date={date}", None, "appointments:read"),
    ("GET", "/v1/waitlist/{entry}", None, "appointments:read"),
    ("DELETE", "/v1/waitlist/{entry}", None, "appointments:write"),
    ("POST", "/v1/webhooks", {"url": "http://127.0.0.1:9/hook"}, "settings:write"),
    ("GET", "/v1/webhooks", None, "settings:write"),
    ("GET", "/v1/webhooks/{webhook}", None, "settings:write"),
    ("PATCH", "/v1/webhooks/{webhook}", {"description": "d"}, "settings:write"),
    ("POST", "/v1/webhooks/{webhook}/rotate-secret", None, "settings:write"),
    ("POST", "/v1/webhooks/{webhook}/test", None, "settings:write"),
    ("GET", "/v1/webhooks/{webhook}/deliveries", None, "settings:write"),
    ("POST", "/v1/webhooks/{webhook}/deliveries/{delivery}/retry", None, "settings:write"),
    ("DELETE", "/v1/webhooks/{webhook}", None, "settings:write"),
]
# SaludYa's route answers in SaludYa's codes.
SALUDYA = {"INSUFFICIENT_SCOPE": "FORBIDDEN", "NOT_FOUND": "RESOURCE_NOT_FOUND"}


def test_the_route_list_above_covers_every_route_of_the_gateway():
    from services.gateway.app import ROUTES as SERVED
    assert {(r.method, r.path.replace("{window_id}", "{window}").replace("{appointment_id}", "{appt}")
             .replace("{doctor_id}", "{doctor}").replace("{patient_id}", "{patient}")
             .replace("{hold_id}", "{hold}").replace("{waitlist_id}", "{entry}").replace("{webhook_id}", "{webhook}")
             .replace("{delivery_id}", "{delivery}")) for r in SERVED} == {(m, p.split("?")[0]) for m, p, _, _ in ROUTES}


async def test_every_route_checks_key_scope_and_tenant(runtime, http, api):
    status, a = await api.post("/v1/appointments", body(api))
    window = api.ids["windows"][(_weekday(api, 3), "Morning")]
    s, doctor = await api.post("/v1/doctors", {"name": "Dr. Tenant", "specialty": "General"})
    s, hold = await api.post("/v1/appointment-holds", {"appointment_type": "General Checkup",
                                                        "appointment_date": local_at(api, 3, "10:30")})
    s, entry = await api.post("/v1/waitlist", {"appointment_type": "General Checkup", "date": local_date(api, 3),
                                               "patient_name": "W", "parent_phone": "+15550001111"})
    runtime.webhooks.allow_private = True  # an endpoint on this machine, never called (no dispatcher runs here)
    s, webhook = await api.post("/v1/webhooks", {"url": "http://127.0.0.1:9/hook"})
    s, delivery = await api.post(f"/v1/webhooks/{webhook['webhook_id']}/test")
    ids = {"window": window, "date": local_date(api, 3), "appt": a["appointment_id"],
           "doctor": doctor["data"]["doctor_id"], "patient": a["data"]["patient_id"],
           "hold": hold["data"]["hold_id"], "entry": entry["data"]["waitlist_id"],
           "webhook": webhook["webhook_id"], "delivery": delivery["data"]["delivery_id"]}
    other = await new_org(runtime, http, name="Other clinic")
    from services.keys import SCOPES
    for method, path, payload, scope in ROUTES:
        def code(ours: str) -> str:
            return SALUDYA.get(ours, ours) if path.startswith("/api/") else ours
        url = path.format(**ids)
        json = {k: v.format(**ids) if isinstance(v, str) else v for k, v in payload.items()} if payload else payload
        status, b = await api.call(method, url, json=json, key=None)
        assert (status, b["error"]["code"]) == (401, "UNAUTHORIZED"), (method, path)
        status, b = await api.call(method, url, json=json, key="sl_bogus_key")
        assert (status, b["error"]["code"]) == (401, "UNAUTHORIZED"), (method, path)
        without = await key_with(runtime, api.org_id, [s for s in SCOPES if s != scope and
                                                       not (scope == "slots:read" and s == "appointments:read")])
        status, b = await api.call(method, url, json=json, key=without)
        assert (status, b["error"]["code"]) == (403, code("INSUFFICIENT_SCOPE")), (method, path)
        if "{" in path.split("?")[0]:  # routes naming an id: another org's key sees 404, never data
            status, b = await other.call(method, url, json=json)
            assert (status, b["error"]["code"]) == (404, code("NOT_FOUND")), (method, path, b)
            assert ids["appt"] not in str(b["error"]) or "not found" in b["error"]["message"]
    status, b = await api.call("GET", "/v1/services", key=None, headers={"Authorization": f"bEaReR {api.key}"})
    assert status == 200, b  # the scheme is case-insensitive (RFC 9110)


@pytest.mark.parametrize("batch_size, slice_size", [(20_000, 250), (20_000, 2), (3, 2)])
async def test_rebuild_gives_the_same_read_models_as_the_live_projectors(runtime, api, batch_size, slice_size):
    """In one batch every row is folded in memory and loaded by COPY; in batches of 3 events, changes to rows
    an earlier batch loaded run as the projectors' statements. A batch projected in slices of 2 events folds a
    row booked in one slice and changed in a later one. All must leave what the live path left."""
    created = []
    for i in range(12):
        status, a = await api.post("/v1/appointments", body(api, phone=str(i), days=3 + i % 3))
        created.append(a)
    await api.patch(f"/v1/appointments/{created[0]['appointment_id']}", {"status": "cancelled"})
    await api.patch(f"/v1/appointments/{created[1]['appointment_id']}", {"appointment_date": local_at(api, 6, "17:15")})
    status, last = await api.patch(f"/v1/appointments/{created[2]['appointment_id']}", {"notes": "late"})
    window = api.ids["windows"][(_weekday(api, 7), "Evening")]
    status, day = await api.patch(f"/v1/schedule-tracking/{window}/{local_date(api, 7)}", {"max_slots": 3})
    assert status == 200 and last["data"]["notes"] == "late"

    async def snapshot():  # inline: no waiting for anything
        async with runtime.pool.acquire() as conn:
            return {t: sorted(map(tuple, await conn.fetch(f"SELECT * FROM {t}")), key=str)
                    for t in ("rm_appointments", "rm_schedule_bookings", "rm_window_days", "rm_patients")}

    async def indexes():  # the rebuild drops the lookup indexes while it loads, and builds them again
        async with runtime.pool.acquire() as conn:
            return sorted(await conn.fetch("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname ="
                                           " current_schema() AND tablename LIKE 'rm\\_%'"))

    live, indexed = await snapshot(), await indexes()
    assert len(live["rm_appointments"]) == 12 and len(live["rm_window_days"]) == 1
    assert len(live["rm_schedule_bookings"]) == 11  # one cancelled
    assert any(not r["indexdef"].startswith("CREATE UNIQUE") for r in indexed)
    report = await rebuild(runtime.pool, runtime.store, batch_size=batch_size, slice_size=slice_size)
    assert report["appointments"]["rows"]["rm_appointments"] == 12
    assert await snapshot() == live
    assert await indexes() == indexed


async def test_a_projection_starting_from_scratch_catches_up_without_moving_the_other_back(runtime, api):
    """As when a release adds an asynchronous projection: one starts at the beginning of the log while the other
    is at its head. The runner reads from the older checkpoint, feeds each only what it has not seen, and never
    moves a checkpoint backwards. The log is made longer than one batch, so catching up takes several."""
    from projections.base import Write, recordset
    from services.projector import run_batch
    from services.store.eventstore import Append, NewEvent, load_checkpoint

    class Seen:  # an asynchronous projection: which appointments it has seen booked
        tables = ("test_seen",)

        def __init__(self, name):
            self.name = name

        def writes(self, event, org_id):
            if event.type != "appointment.booked":
                return []
            return [Write("test_seen", "INSERT INTO test_seen SELECT * FROM " + recordset("p text, a text")
                          + " WHERE {guard}", (self.name, event.appointment["appointment_id"]),
                          (event.appointment["appointment_id"],))]

    old, new = Seen("old"), Seen("new")
    await runtime.store.append([Append("filler", 0, [NewEvent("test.filler", {"n": n}) for n in range(2500)])])
    for i in range(5):
        status, a = await api.post("/v1/appointments", body(api, phone=f"7{i}", days=3))
        assert status == 201
    async with runtime.pool.acquire() as conn:
        await conn.execute("CREATE TABLE test_seen (projection text, appointment_id text,"
                           " PRIMARY KEY (projection, appointment_id))")
        while await run_batch(conn, runtime.store, [old]):
            pass
        start = await load_checkpoint(conn, "old")
        status, a = await api.post("/v1/appointments", body(api, phone="79", days=4))
        positions, batches = [], 0
        while await run_batch(conn, runtime.store, [old, new]):
            batches += 1
            positions.append(await load_checkpoint(conn, "old"))
        assert batches >= 3 and all(p >= start for p in positions), positions
        assert await load_checkpoint(conn, "old") == await load_checkpoint(conn, "new")
        seen = await conn.fetch("SELECT projection, count(*) AS n FROM test_seen GROUP BY projection")
        assert {r["projection"]: r["n"] for r in seen} == {"old": 6, "new": 6}
