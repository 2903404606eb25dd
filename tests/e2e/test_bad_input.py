"""Bad input gets a clear 4xx in the documented shape, never a 500 (DESIGN §4): one test per group the fuzzing
of issue 12 found, most over raw sockets so that the bytes are exactly the bad ones."""
from __future__ import annotations

import asyncio
import json
import time
from urllib.parse import urlsplit

import pytest

from services.runtime import Runtime
from services.settings import Settings
from tests.builders import create_body
from tests.e2e.conftest import local_at, local_date, new_org


async def raw(api, request: bytes, read_timeout: float = 10) -> tuple[int, dict, dict]:
    """Send exactly these bytes; the status, headers and JSON body of the answer."""
    url = urlsplit(api.base)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), read_timeout)
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", 0))), read_timeout)
        return int(lines[0].split()[1]), headers, json.loads(body) if body else {}
    finally:
        writer.close()


def req(method: str, path: bytes, key: str | None, body: bytes = b"", extra: bytes = b"") -> bytes:
    auth = b"Authorization: Bearer " + key.encode() + b"\r\n" if key else b""
    return (method.encode() + b" " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + auth
            + extra + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def refused(status: int, body: dict, code: str = "VALIDATION_ERROR", field: str | None = None) -> bool:
    ok = 400 <= status < 500 and body.get("success") is False and body["error"]["code"] == code
    return ok and (field is None or field in body["error"]["details"])


async def test_settings_that_would_break_every_later_create_are_refused(api):
    for name, value in (("min_notice_hours", 1e12), ("max_advance_booking_days", 0), ("buffer_time_minutes", 10**9),
                        ("cancellation_notice_hours", 2**70), ("max_advance_booking_days", 10**20)):
        status, b = await api.patch("/v1/appointment-config", {name: value})
        assert refused(status, b, field=name), (name, b)
    status, _, b = await raw(api, req("PATCH", b"/v1/appointment-config", api.key, b'{"min_notice_hours": Infinity}'))
    assert refused(status, b), b
    status, b = await api.post("/v1/appointments", create_body(local_at(api, 3, "09:30")))
    assert status == 201, b  # the org still books


async def test_dates_are_yyyy_mm_dd_only_in_paths_queries_and_bodies(api):
    window = next(iter(api.ids["windows"].values()))
    for day in ("20261202", "2026-W48-3", "9999-01-01", "0001-01-01", "2026-12-02T00:00"):
        status, b = await api.patch(f"/v1/schedule-tracking/{window}/{day}", {"status": "CLOSED"})
        assert refused(status, b, field="date"), (day, b)
        status, b = await api.get(f"/v1/appointment-slots/availability?date={day}")
        assert refused(status, b, field="date"), (day, b)
        status, b = await api.get(f"/v1/appointments?date_from={day}")
        assert refused(status, b, field="date_from"), (day, b)
    for when in ("9999-12-31T10:00:00Z", "0001-01-01T10:00:00Z", "2026-12-02"):
        status, b = await api.post("/v1/appointments", create_body(when))
        assert refused(status, b, field="appointment_date"), (when, b)
    status, a = await api.post("/v1/appointments", create_body(local_at(api, 3, "09:30")))
    status, b = await api.call("PUT", f"/api/appointments/{a['appointment_id']}", json={"date": "9999-01-01"})
    assert status == 400 and b["error"]["code"] == "VALIDATION_ERROR", b
    status, b = await api.patch(f"/v1/appointments/{a['appointment_id']}", {"follow_up_date": "20270101"})
    assert refused(status, b, field="follow_up_date"), b


async def test_text_that_postgresql_or_json_cannot_carry_is_refused_wherever_it_is(api):
    body = json.dumps(create_body(local_at(api, 3, "09:30"), name="Aa\u0000dhi")).encode()
    status, _, b = await raw(api, req("POST", b"/v1/appointments", api.key, body))
    assert refused(status, b, field="patient_name"), b
    body = b'{"appointment_type": "General Checkup", "appointment_date": "2026-12-01T10:00:00Z",' \
           b' "patient_name": "\\ud800", "parent_phone": "+1"}'  # a lone surrogate, escaped in JSON
    status, _, b = await raw(api, req("POST", b"/v1/appointments", api.key, body))
    assert refused(status, b, field="patient_name"), b
    status, _, b = await raw(api, req("POST", b"/v1/appointments", api.key, b'{"patient_name": "\xff\xfe"}'))
    assert refused(status, b, field="body"), b  # not UTF-8 at all
    status, _, b = await raw(api, req("GET", b"/v1/appointments?parent_phone=%00", api.key))
    assert refused(status, b), b
    status, _, b = await raw(api, req("GET", b"/v1/appointments/appt_%00", api.key))
    assert 400 <= status < 500 and b["success"] is False, b
    status, _, b = await raw(api, req("GET", b"/v1/appointments?cursor=%FF%FE", api.key))
    assert 400 <= status < 500 and b["success"] is False, b


async def test_non_utf8_headers_get_a_clear_answer_and_the_write_is_not_lost(api):
    body = json.dumps(create_body(local_at(api, 3, "10:00"), "+15557770001")).encode()
    status, headers, b = await raw(api, req("POST", b"/v1/appointments", api.key, body, b"X-Request-ID: \xff\xfe\r\n"))
    assert status == 201, b  # a request id we cannot echo is replaced, not fatal
    assert headers["x-request-id"] != "\xff\xfe" and len(headers["x-request-id"]) == 32
    status, found = await api.get(f"/v1/appointments/{b['appointment_id']}")
    assert status == 200
    status, headers, b = await raw(api, req("GET", b"/v1/services", None, extra=b"Authorization: Bearer \xff\xfe\r\n"))
    assert refused(status, b, "UNAUTHORIZED"), b


async def test_json_nested_deeper_than_32_is_refused(api):
    for depth in (40, 2000):
        status, headers, b = await raw(api, req("PATCH", b"/v1/appointment-config", api.key,
                                                 b'{"a":' + b"[" * depth + b"]" * depth + b"}"))
        assert refused(status, b, field="body"), (depth, b)


async def test_integers_beyond_their_column_and_undecodable_cursors_are_refused(api):
    status, b = await api.get(f"/v1/appointments?min_position={2**64}")
    assert refused(status, b, field="min_position"), b
    status, b = await api.get(f"/v1/appointments?limit={2**64}")
    assert refused(status, b, field="limit"), b
    for cursor in ("!!!", "W10", "WyIyMDI2LTAxLTAxIl0", "eyJhIjogMX0", "WyIyMDI2MTIwMiIsICJhIl0", "WzEsIDJd"):
        status, b = await api.get(f"/v1/appointments?cursor={cursor}")
        assert refused(status, b, field="cursor"), (cursor, b)


async def test_null_is_refused_for_fields_that_cannot_be_null(api):
    status, a = await api.post("/v1/appointments", create_body(local_at(api, 3, "09:30")))
    path = f"/v1/appointments/{a['appointment_id']}"
    for name in ("follow_up_required", "status", "appointment_date", "send_notification", "duration_minutes"):
        status, b = await api.patch(path, {name: None})
        assert refused(status, b, field=name), (name, b)
    status, b = await api.patch("/v1/appointment-config", {"timezone": None})
    assert refused(status, b, field="timezone"), b
    status, b = await api.patch(path, {"notes": None})  # a note may be cleared
    assert status == 200, b


async def test_aiohttps_own_errors_and_405s_are_in_the_json_shape(api):
    status, headers, b = await raw(api, b"GET /v1/services HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
    assert (status, headers["content-type"].split(";")[0], b["success"]) == (400, "application/json", False), b
    status, headers, b = await raw(api, b"BR\x00KEN / HTTP/1.1\r\n\r\n")
    assert status == 400 and b["error"]["code"] == "VALIDATION_ERROR", b
    status, headers, b = await raw(api, req("DELETE", b"/v1/services", api.key))
    assert (status, b["error"]["code"]) == (405, "METHOD_NOT_ALLOWED") and "POST" in headers["allow"], headers
    status, headers, b = await raw(api, req("GET", b"/v1/nowhere", api.key))
    assert (status, b["error"]["code"]) == (404, "NOT_FOUND")


@pytest.fixture
async def strict_runtime(pg_url, schema):
    settings = Settings(database_url=pg_url, database_schema=schema, http_port=0, kafka_bootstrap=None,
                        auth_failures_per_minute=5, head_timeout_seconds=1, body_timeout_seconds=1, max_connections=3)
    rt = Runtime(settings, components=("gateway",))
    await rt.start()
    yield rt
    await rt.stop()


async def test_slow_clients_are_cut_off(strict_runtime, http):
    api = await new_org(strict_runtime, http)
    url = urlsplit(api.base)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(b"GET /v1/services HTTP/1.1\r\nHost: x\r\n")  # and then nothing more of the head
    started = time.monotonic()
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the server
    assert time.monotonic() - started < 5
    writer.close()
    status, headers, b = await raw(api, b"POST /v1/branches HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                                   + api.key.encode() + b"\r\nContent-Length: 50\r\n\r\n{", read_timeout=10)
    assert (status, b["error"]["code"]) == (408, "REQUEST_TIMEOUT"), b


async def test_connections_beyond_the_cap_are_closed_at_once(strict_runtime, http):
    url = urlsplit(strict_runtime.http_url)
    held = [await asyncio.open_connection(url.hostname, url.port) for _ in range(3)]
    await asyncio.sleep(0.1)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # the fourth is closed by the server
    for _, w in [*held, (reader, writer)]:
        w.close()


async def test_repeated_failed_authentication_is_rate_limited(strict_runtime, http):
    api = await new_org(strict_runtime, http)
    answers = [await api.get("/v1/services", key=f"sl_nope_{n}") for n in range(7)]
    assert [s for s, _ in answers[:5]] == [401] * 5
    assert [(s, b["error"]["code"]) for s, b in answers[5:]] == [(429, "RATE_LIMITED")] * 2
    status, headers, b = await raw(api, req("GET", b"/v1/services", "sl_nope_8"))
    assert status == 429 and int(headers["retry-after"]) > 0
    status, b = await api.get("/v1/services")  # even the right key waits out the window: it is the client
    assert status == 429


async def test_after_all_that_the_service_is_ready_and_an_org_still_books(runtime, api):
    status, b = await api.post("/v1/appointments", create_body(local_at(api, 3, "11:00"), "+15550001234"))
    assert status == 201, b
    status, b = await api.get(f"/v1/appointments?date={local_date(api, 3)}")
    assert status == 200 and b["data"]
