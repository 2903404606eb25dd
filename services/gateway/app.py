"""The HTTP gateway. One route table drives routing, the scope check and the OpenAPI document."""
from __future__ import annotations

import asyncio
import functools
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from pydantic import BaseModel, ValidationError

from domain.errors import DomainError
from schemas.http import ConfirmHold, CreateDoctor, CreateHold, DoctorOut, HoldOut, JoinWaitlist, \
    PatientAppointmentsQuery, PatientOut, PatientQuery, UpdateDoctor, WaitlistOut, WaitlistQuery, CreateWebhook, \
    DeliveriesQuery, DeliveryOut, UpdateWebhook, WebhookOut
from schemas.saludya import SaludYaAppointment, SaludYaUpdate
from services.gateway import handlers as h
from services.gateway import holds, inputs, registry, saludya, webhooks
from services.logs import log
from services.store.pool import DATABASE_UNAVAILABLE
from services.gateway.backend import Backend

BACKEND = web.AppKey("backend", Backend)
REQUEST_ID = h.REQUEST_ID

REQUESTS = Counter("slotledger_http_requests_total", "HTTP requests", ["route", "status"])
LATENCY = Histogram("slotledger_http_request_seconds", "HTTP request latency", ["route"])


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    scopes: tuple[str, ...]  # any one of them suffices; empty: public
    handler: Callable[..., Awaitable[Any]]
    summary: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: Any = None
    style: str = "v1"  # "saludya": SaludYa's bare response object and error shape


def error_response(status: int, code: str, message: str, details: dict | None = None,
                   extra: dict | None = None, headers: dict | None = None) -> web.Response:
    body = {"success": False, **(extra or {}), "error": {"code": code, "message": message, "details": details or {}}}
    return web.json_response(body, status=status, dumps=h.json_text, headers=headers)


def validation_details(exc: ValidationError) -> dict[str, str]:
    details: dict[str, str] = {}
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "body"
        if err["type"] == "not_null":
            details[err["ctx"]["field"]] = "must not be null"
        elif err["type"] == "missing":
            details[field] = "is required"
        elif err["type"] == "extra_forbidden":
            details[field] = "is not a known field"
        else:
            details[field] = err["msg"]
    return details


ROUTES: list[Route] = [
    Route("GET", "/v1/appointment-config", ("appointments:read",), h.get_config, "Org booking settings",
          response=h.ConfigOut),
    Route("PATCH", "/v1/appointment-config", ("settings:write",), h.patch_config, "Change org booking settings",
          body=h.SettingsPatch, response=h.ConfigOut),
    Route("GET", "/v1/services", ("appointments:read",), h.list_services, "List services",
          response=list[h.ServiceOut]),
    Route("POST", "/v1/services", ("settings:write",), h.create_service, "Add a service", body=h.CreateService,
          response=h.ServiceOut),
    Route("GET", "/v1/branches", ("appointments:read",), h.list_branches, "List branches",
          response=list[h.BranchOut]),
    Route("POST", "/v1/branches", ("settings:write",), h.create_branch, "Add a branch", body=h.CreateBranch,
          response=h.BranchOut),
    Route("GET", "/v1/appointment-slots/availability", ("slots:read", "appointments:read"), h.availability,
          "Availability per window-day on one date", query=h.AvailabilityQuery),
    Route("GET", "/v1/appointment-slots", ("slots:read",), h.list_windows, "List calendar windows",
          query=h.WindowsQuery, response=list[h.WindowOut]),
    Route("POST", "/v1/appointment-slots", ("slots:write",), h.create_window, "Create a calendar window",
          body=h.CreateWindow, response=h.WindowOut),
    Route("PATCH", "/v1/appointment-slots/{window_id}", ("slots:write",), h.update_window,
          "Change a calendar window", body=h.UpdateWindow, response=h.WindowOut),
    Route("POST", "/v1/appointment-slots/{window_id}/disable", ("slots:write",), h.disable_window,
          "Disable a calendar window for all future dates", response=h.WindowOut),
    Route("GET", "/v1/schedule-tracking", ("slots:read",), h.schedule_tracking,
          "One record per window per date", query=h.TrackingQuery, response=list[h.TrackingRecord]),
    Route("PATCH", "/v1/schedule-tracking/{window_id}/{date}", ("slots:write",), h.update_window_day,
          "Close/reopen one date or override its capacity", body=h.UpdateWindowDay, response=h.TrackingRecord),
    Route("POST", "/v1/schedule-tracking/regenerate", ("slots:write",), h.regenerate,
          "Rebuild tracking for a date range from the log", body=h.Regenerate),
    Route("POST", "/v1/appointments", ("appointments:write",), h.create_appointment, "Book an appointment",
          body=h.CreateAppointment, response=h.Appointment),
    Route("GET", "/v1/appointments", ("appointments:read",), h.search_appointments, "Search appointments",
          query=h.SearchQuery, response=list[h.Appointment]),
    Route("GET", "/v1/appointments/{appointment_id}", ("appointments:read",), h.get_appointment,
          "One appointment (cancelled ones too)", query=h.ReadQuery, response=h.Appointment),
    Route("PATCH", "/v1/appointments/{appointment_id}", ("appointments:write",), h.update_appointment,
          "Update, reschedule, cancel or complete an appointment", body=h.UpdateAppointment,
          response=h.Appointment),
    Route("GET", "/v1/appointments/{appointment_id}/history", ("appointments:read",), h.appointment_history,
          "The appointment's events, oldest first"),
    Route("GET", "/v1/doctors", ("appointments:read",), registry.list_doctors, "List registered doctors",
          response=list[DoctorOut]),
    Route("POST", "/v1/doctors", ("settings:write",), registry.create_doctor, "Register a doctor", body=CreateDoctor,
          response=DoctorOut),
    Route("GET", "/v1/doctors/{doctor_id}", ("appointments:read",), registry.get_doctor, "One doctor",
          response=DoctorOut),
    Route("PATCH", "/v1/doctors/{doctor_id}", ("settings:write",), registry.update_doctor, "Change a doctor",
          body=UpdateDoctor, response=DoctorOut),
    Route("GET", "/v1/patients", ("appointments:read",), registry.find_patients,
          "Patients by phone (E.164 comparison; a parent's phone may serve several children)", query=PatientQuery,
          response=list[PatientOut]),
    Route("GET", "/v1/patients/{patient_id}", ("appointments:read",), registry.get_patient, "One patient",
          response=PatientOut),
    Route("GET", "/v1/patients/{patient_id}/appointments", ("appointments:read",), registry.patient_appointments,
          "A patient's appointments (cancelled ones too)", query=PatientAppointmentsQuery,
          response=list[h.Appointment]),
    Route("POST", "/v1/appointment-holds", ("appointments:write",), holds.create_hold,
          "Hold a place for a few minutes (create rules 3–10; counts against capacity until it expires)",
          body=CreateHold, response=HoldOut),
    Route("GET", "/v1/appointment-holds/{hold_id}", ("appointments:read",), holds.get_hold, "One hold",
          query=h.ReadQuery, response=HoldOut),
    Route("DELETE", "/v1/appointment-holds/{hold_id}", ("appointments:write",), holds.release_hold,
          "Release a hold (the place goes to the waitlist first)", response=HoldOut),
    Route("POST", "/v1/appointment-holds/{hold_id}/confirm", ("appointments:write",), holds.confirm_hold,
          "Book the held place (never refused for capacity; 410 HOLD_EXPIRED after expiry)", body=ConfirmHold,
          response=h.Appointment),
    Route("POST", "/v1/waitlist", ("appointments:write",), holds.join_waitlist,
          "Join the queue of a date's matching window-days", body=JoinWaitlist, response=WaitlistOut),
    Route("GET", "/v1/waitlist", ("appointments:read",), holds.list_waitlist, "A date's waitlist, in join order",
          query=WaitlistQuery, response=list[WaitlistOut]),
    Route("GET", "/v1/waitlist/{waitlist_id}", ("appointments:read",), holds.get_entry, "One waitlist entry",
          query=h.ReadQuery, response=WaitlistOut),
    Route("DELETE", "/v1/waitlist/{waitlist_id}", ("appointments:write",), holds.leave_waitlist,
          "Leave the waitlist (an offer held is released and passes on)", response=WaitlistOut),
    Route("POST", "/v1/webhooks", ("settings:write",), webhooks.create_webhook,
          "Subscribe an endpoint to the org's events (the secret is shown once)", body=CreateWebhook,
          response=WebhookOut),
    Route("GET", "/v1/webhooks", ("settings:write",), webhooks.list_webhooks, "The org's webhook endpoints",
          response=list[WebhookOut]),
    Route("GET", "/v1/webhooks/{webhook_id}", ("settings:write",), webhooks.get_webhook, "One webhook endpoint",
          response=WebhookOut),
    Route("PATCH", "/v1/webhooks/{webhook_id}", ("settings:write",), webhooks.update_webhook,
          "Change an endpoint (url, event types, description; status enabled re-enables it)", body=UpdateWebhook,
          response=WebhookOut),
    Route("DELETE", "/v1/webhooks/{webhook_id}", ("settings:write",), webhooks.delete_webhook,
          "Remove an endpoint and its delivery log", response=WebhookOut),
    Route("POST", "/v1/webhooks/{webhook_id}/rotate-secret", ("settings:write",), webhooks.rotate_secret,
          "A new secret (shown once); the previous one signs too for 24 hours", response=WebhookOut),
    Route("POST", "/v1/webhooks/{webhook_id}/test", ("settings:write",), webhooks.send_test,
          "Queue a slotledger.webhook.test delivery", response=DeliveryOut),
    Route("GET", "/v1/webhooks/{webhook_id}/deliveries", ("settings:write",), webhooks.list_deliveries,
          "Every delivery, newest first, with each attempt", query=DeliveriesQuery, response=list[DeliveryOut]),
    Route("POST", "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry", ("settings:write",),
          webhooks.retry_delivery, "Deliver again now", response=DeliveryOut),
    Route("PUT", "/api/appointments/{appointment_id}", ("appointments:write",), saludya.update_appointment,
          "SaludYa-compatible update (SaludYa request, response and error shapes)", body=SaludYaUpdate,
          response=SaludYaAppointment, style="saludya"),
]


class _Throttled:
    """One warning per `every` seconds while the database stays unavailable, with how many requests it cost."""

    def __init__(self, every: float = 5.0):
        self.every, self.count, self.last = every, 0, 0.0

    def seen(self, exc: BaseException) -> None:
        self.count += 1
        if time.monotonic() - self.last >= self.every:
            log.warning("database unavailable; answering 503", error=repr(exc)[:300], requests=self.count)
            self.count, self.last = 0, time.monotonic()


_UNAVAILABLE = _Throttled()


def _endpoint(route: Route):
    errors = saludya.error_response if route.style == "saludya" else error_response
    latency = LATENCY.labels(route.path)  # the route's metric children, looked up once, not per request
    counted = functools.cache(lambda status: REQUESTS.labels(route.path, str(status)))

    async def endpoint(request: web.Request) -> web.StreamResponse:
        backend = request.app[BACKEND]
        started = time.perf_counter()
        status = 500
        try:
            principal = await _authorise(request, backend, route)
            inputs.check_target(request)
            args: dict[str, Any] = {}
            if route.query is not None:
                query = {k: v for k, v in request.query.items()}
                if "X-Min-Position" in request.headers and "min_position" in route.query.model_fields:
                    query.setdefault("min_position", request.headers["X-Min-Position"])
                args["query"] = route.query.model_validate(query)
            if route.body is not None:
                # strict: JSON's false is not 0, "5" is not 5 (query strings stay lax: they are all text)
                args["body"] = route.body.model_validate(await _json_body(request, backend), strict=True)
            response = await route.handler(request, backend, principal, **args)
            status = response.status
            return response
        except ValidationError as exc:
            status = 400
            return errors(400, "VALIDATION_ERROR", "Invalid request data", validation_details(exc))
        except DomainError as exc:
            status = exc.status
            return errors(exc.status, exc.code, exc.message, exc.details, exc.extra, exc.headers)
        except DATABASE_UNAVAILABLE as exc:  # down, restarting or stalled: say so, and when to come back
            status = 503
            _UNAVAILABLE.seen(exc)
            return errors(503, "SERVICE_UNAVAILABLE", "the database is unavailable; retry shortly", {},
                          None, {"Retry-After": "1"})
        finally:
            counted(status).inc()
            latency.observe(time.perf_counter() - started)

    return endpoint


async def _authorise(request: web.Request, backend: Backend, route: Route):
    client = request.remote or "unknown"
    backend.auth_limiter.check(client)
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    principal = None
    if scheme.casefold() == "bearer" and token.strip():  # the scheme is case-insensitive (RFC 9110 §11.1)
        principal = await backend.keys.verify(token.strip())
    if principal is None:
        backend.auth_limiter.failed(client)
        raise DomainError("UNAUTHORIZED", "Invalid or missing API key")
    if not principal.scopes.intersection(route.scopes):
        raise DomainError("INSUFFICIENT_SCOPE", f"this API key lacks the scope {' or '.join(route.scopes)}",
                          {"required": list(route.scopes)})
    structlog.contextvars.bind_contextvars(org_id=principal.org_id, key_id=principal.key_id)
    return principal


async def _json_body(request: web.Request, backend: Backend) -> Any:
    if not request.content.is_eof():  # still arriving (usually it is all here, and no timer is needed)
        try:
            async with asyncio.timeout(backend.settings.body_timeout_seconds):  # a slow body is cut off
                await request.read()
        except TimeoutError:
            raise DomainError("REQUEST_TIMEOUT", "the request body did not arrive in time") from None
    return inputs.parse_json(await request.read())  # the request keeps its body: a second read is free


@web.middleware
async def request_context(request: web.Request, handler) -> web.StreamResponse:
    request_id = inputs.request_id(request) or uuid.uuid4().hex
    request[REQUEST_ID] = request_id
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id, method=request.method, path=request.path)
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # aiohttp's own 404/405/413…: same error shape
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 401: "UNAUTHORIZED",
                413: "PAYLOAD_TOO_LARGE"}.get(exc.status, "HTTP_ERROR")
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None  # 405 names what is allowed
        response = error_response(exc.status, code, exc.reason or "error",
                                  {"path": inputs.text_problem(request.path) and "?" or request.path}
                                  if exc.status == 404 else {}, headers=allow)
    except Exception:  # never a bare 500 page
        log.exception("unhandled error")
        response = error_response(500, "INTERNAL_ERROR", "an unexpected error occurred; it has been logged",
                                  {"request_id": request_id})
    response.headers["X-Request-ID"] = request_id
    return response


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    checks = await request.app[BACKEND].readiness()
    ready = all(check["ok"] for check in checks.values() if check.get("required", True))
    settings = request.app[BACKEND].settings
    return web.json_response({"status": "ready" if ready else "not_ready", "checks": checks,
                              "process": {"worker": settings.worker, "pid": os.getpid()}},
                             status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    from services.gateway.openapi import document

    return web.json_response(document(ROUTES))


# Path ids that must look like ids, so /v1/appointment-slots/availability is never read as a window id.
ID_PATTERNS = {"window_id": "[0-9a-fA-F-]{36}"}


def _matching(path: str) -> str:
    for name, pattern in ID_PATTERNS.items():
        path = path.replace("{%s}" % name, "{%s:%s}" % (name, pattern))
    return path


def build_app(backend: Backend) -> web.Application:
    app = web.Application(middlewares=[request_context], client_max_size=1024 * 1024)
    app[BACKEND] = backend
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    for route in ROUTES:
        app.router.add_route(route.method, _matching(route.path), _endpoint(route))
    return app
