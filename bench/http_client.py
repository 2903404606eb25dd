"""A minimal HTTP/1.1 keep-alive client for the load generator: JSON requests, responses with Content-Length
(which is how the gateway answers). Per request it costs a fraction of aiohttp's client, so on a 2-core machine
the bench measures the service rather than its own client."""
from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class HttpClient:
    def __init__(self, url: str, key: str):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port or 80
        self._fixed = (f"Host: {parts.netloc}\r\nAuthorization: Bearer {key}\r\n"
                       "Content-Type: application/json\r\n").encode()
        self._idle: list[Connection] = []

    async def connect(self, n: int) -> None:
        """Open `n` connections ahead (so a burst is not also a burst of TCP handshakes)."""
        self._idle += await asyncio.gather(*(asyncio.open_connection(self.host, self.port) for _ in range(n)))

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """(status, decoded JSON body or None). Raises OSError or asyncio.IncompleteReadError if the connection
        fails; that connection is dropped."""
        conn = self._idle.pop() if self._idle else await asyncio.open_connection(self.host, self.port)
        reader, writer = conn
        data = b"" if body is None else json.dumps(body).encode()
        try:
            writer.write(b"%s %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s"
                         % (method.encode(), path.encode(), self._fixed, len(data), data))
            head = await reader.readuntil(b"\r\n\r\n")
            status, length, close = _parse_head(head)
            payload = await reader.readexactly(length)
        except BaseException:
            writer.close()
            raise
        if close:
            writer.close()
        else:
            self._idle.append(conn)
        return status, json.loads(payload) if payload else None

    async def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


def _parse_head(head: bytes) -> tuple[int, int, bool]:
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length, close = 0, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection":
            close = value.strip().lower() == b"close"
        elif name == b"transfer-encoding":
            raise OSError("a chunked response: this client reads Content-Length bodies only")
    return status, length, close
