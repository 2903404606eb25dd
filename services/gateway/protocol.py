"""aiohttp's connection handler with what DESIGN §4 asks of it and aiohttp offers no hook for: its own
protocol errors (a bad request line, an invalid header) answered in our JSON error shape, and a request head
that must arrive within `head_timeout` seconds of its first byte (a slow client is cut off). The body's own
limit is the gateway's (`body_timeout_seconds`)."""
from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server

from services.logs import log

HEAD_TIMEOUT = 10.0
IDLE_TIMEOUT = 75.0  # an idle keep-alive connection is closed after this
MAX_CONNECTIONS = 1000  # per gateway process; more are closed at once


class GuardedRequestHandler(RequestHandler):
    head_timeout = HEAD_TIMEOUT
    max_connections = MAX_CONNECTIONS
    _head_timer: asyncio.TimerHandle | None = None
    _heads_seen = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._manager is not None and len(self._manager.connections) > self.max_connections:
            log.warning("refusing a connection: the gateway holds its maximum", limit=self.max_connections)
            transport.close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._request_count > self._heads_seen:  # a whole head arrived: its clock stops
            self._heads_seen = self._request_count
            self._stop_head_clock()
        elif data and self._head_timer is None and self.transport is not None:
            self._head_timer = asyncio.get_running_loop().call_later(self.head_timeout, self._head_too_slow)

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.transport is not None:
            log.info("closing a connection whose request head did not arrive in time", seconds=self.head_timeout)
            self.transport.close()

    def _stop_head_clock(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_head_clock()
        super().connection_lost(exc)

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs it; raises if a response already started
        from services.gateway.app import error_response

        code = "VALIDATION_ERROR" if status == 400 else "INTERNAL_ERROR" if status >= 500 else "HTTP_ERROR"
        response = error_response(status, code, "the request is not valid HTTP" if status == 400 else
                                  "an unexpected error occurred; it has been logged")
        response.force_close()
        return response


class GuardedServer(Server):
    handler_class: type[GuardedRequestHandler] = GuardedRequestHandler

    def __call__(self) -> RequestHandler:
        return self.handler_class(self, loop=self._loop, **self._kwargs)


def runner(app: web.Application, head_timeout: float = HEAD_TIMEOUT,
           max_connections: int = MAX_CONNECTIONS) -> web.AppRunner:
    handler = type("Handler", (GuardedRequestHandler,), {"head_timeout": head_timeout,
                                                         "max_connections": max_connections})
    server = type("Server", (GuardedServer,), {"handler_class": handler})

    class Runner(web.AppRunner):
        async def _make_server(self) -> Server:
            made = await super()._make_server()
            made.__class__ = server  # the same server, handing out our connection handler
            return made

    return Runner(app, access_log=None, keepalive_timeout=IDLE_TIMEOUT)
