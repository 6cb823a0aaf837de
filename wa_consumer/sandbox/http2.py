"""HTTP/2 on the sandbox's TLS port, answered by the same aiohttp application.

Meta serves the Cloud API over HTTP/2 to a client that offers ``h2`` by ALPN. aiohttp's
server speaks HTTP/1.1 only, so each TLS connection is handed on after its handshake: to
``Http2Connection`` (framed by the ``h2`` library) when ``h2`` was negotiated, to aiohttp's
own protocol otherwise. Each HTTP/2 stream becomes an aiohttp request and goes through the
application's router and handlers by the two calls aiohttp's HTTP/1.1 protocol makes
(``web.Server.request_factory`` and ``request_handler``): one application, one state,
whatever the protocol.

What this relies on below aiohttp's public API (aiohttp bounded below 4; pinned by
tests/unit/test_sandbox_http2.py): the request factory's arguments (a ``RawRequestMessage``,
a ``StreamReader`` payload, a protocol object with ``transport``, ``ssl_context``,
``peername`` and ``sockname``, an ``AbstractStreamWriter``), and that a response writes
itself through the writer's ``write_headers``, ``write`` and ``write_eof``.

A handler that drops its connection (a ``hang`` rule: ``request.transport.close()``) resets
its own stream; the connection's other streams go on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final

from aiohttp import web
from yarl import URL

from wa_consumer.sandbox.connections import ConnectionCount
from wa_consumer.sandbox.http2_streams import Http2Connection

#: Streams one connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS); 100 is the
#: RFC's suggested least and h2's default. A client does not open a second connection past
#: it (RFC 9113 §9.1): requests wait for a free stream.
DEFAULT_MAX_STREAMS: Final = 100


class Http2Server:
    """Hands each TLS connection to HTTP/2 or to aiohttp by what ALPN chose; counts them."""

    def __init__(self, count: ConnectionCount, max_streams: int = DEFAULT_MAX_STREAMS) -> None:
        if max_streams < 1:
            raise ValueError("max_streams must be at least 1")
        self.count = count
        self.max_streams = max_streams
        self.live: set[Http2Connection] = set()
        self._server: web.Server | None = None

    def factory(self, server: web.Server) -> Callable[[], asyncio.Protocol]:
        """The protocol factory of the TLS port, on the runner's ``server``."""
        self._server = server
        return lambda: _Negotiated(self)

    def protocol_for(self, transport: asyncio.BaseTransport) -> asyncio.Protocol:
        """HTTP/2 if the handshake chose ``h2``, else aiohttp's own HTTP/1.1 protocol."""
        assert self._server is not None  # factory() was called
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
            return Http2Connection(
                self._server, count=self.count, max_streams=self.max_streams, live=self.live
            )
        protocol: asyncio.Protocol = self._server()  # aiohttp's, counted by ConnectionCount
        return protocol

    async def shutdown(self, _: web.Application) -> None:
        """GOAWAY to every connection; streams get the runner's grace, then all close."""
        for connection in list(self.live):
            connection.go_away()
        await asyncio.gather(*(c.finished(5.0) for c in list(self.live)))


class _Negotiated(asyncio.Protocol):
    """Lives until the handshake is done, then gives the transport to the chosen protocol."""

    def __init__(self, server: Http2Server) -> None:
        self._server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        protocol = self._server.protocol_for(transport)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)


class Http2Site(web.BaseSite):
    """An HTTPS site whose connections ``Http2Server`` hands to HTTP/2 or HTTP/1.1."""

    __slots__ = ("_factory", "_host", "_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        ssl_context: Any,
        http2: Http2Server,
        backlog: int = 128,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        assert runner.server is not None  # BaseSite checked it
        self._host, self._port = host, port
        self._factory = http2.factory(runner.server)

    @property
    def name(self) -> str:
        return str(URL.build(scheme="https", host=self._host, port=self._port))

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._factory, self._host, self._port, ssl=self._ssl_context, backlog=self._backlog
        )
