"""Connections the sandbox accepted: how many a client opened (``GET /_sandbox/stats``).

A client that reuses its connections opens a few for a whole run; one that does not opens one
per request, and over TLS pays a handshake for each. Counted when aiohttp's server registers a
connection, or when an HTTP/2 one starts (``sandbox/http2.py``); over TLS after the handshake,
so handshakes that fail are not counted.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web


class ConnectionCount:
    """``opened`` since start (``reset`` does not clear it: the bench takes differences), of
    them ``tls_opened`` over TLS and ``h2_opened`` HTTP/2, and ``open`` now."""

    def __init__(self) -> None:
        self.opened = 0
        self.tls_opened = 0
        self.h2_opened = 0
        self.closed = 0

    def made(self, transport: asyncio.BaseTransport, *, h2: bool = False) -> None:
        """A connection served from now on (``h2``: by ``sandbox/http2.py``)."""
        self.opened += 1
        self.h2_opened += h2
        if transport.get_extra_info("ssl_object") is not None:
            self.tls_opened += 1

    def lost(self) -> None:
        """A connection counted by ``made`` is gone."""
        self.closed += 1

    def attach(self, server: web.Server) -> None:
        """Count the connections of ``server`` (the runner's, after ``setup()``)."""
        made, lost = server.connection_made, server.connection_lost

        def connection_made(handler: Any, transport: asyncio.Transport) -> None:
            self.made(transport)
            made(handler, transport)

        def connection_lost(handler: Any, exc: BaseException | None = None) -> None:
            self.lost()
            lost(handler, exc)

        # aiohttp's request handler calls these on its server for each connection.
        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]

    def stats(self) -> dict[str, int]:
        return {
            "opened": self.opened,
            "tls_opened": self.tls_opened,
            "h2_opened": self.h2_opened,
            "open": self.opened - self.closed,
        }


CONNECTIONS_KEY = web.AppKey("sandbox_connections", ConnectionCount)
