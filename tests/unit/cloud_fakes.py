"""What the Cloud API client's tests share: a stand-in for ``/messages`` on a real local HTTP
server (it counts connections and requests in flight), raw TCP servers for broken answers,
an HTTP/2 server that refuses or resets streams, a port that refuses, one that never completes
a connect, a local CA for HTTPS, and each transport built as the daemon builds it."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import StreamEnded
from h2.exceptions import ProtocolError as H2ProtocolError

from wa_consumer.sandbox.tls import make_tls
from wa_consumer.transport import Transport
from wa_consumer.transport.aiohttp import AiohttpTransport
from wa_consumer.transport.pyreqwest import PyreqwestTransport

TRANSPORTS = ("aiohttp", "pyreqwest")
TOKEN = "EAAG-secret-token-do-not-leak-0123456789"
NUMBER = "106540352242922"
PAYLOAD = orjson.dumps(
    {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "27821234567",
        "type": "text",
        "text": {"body": "Your order is ready", "preview_url": False},
    }
)
WAMID = "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJCOTY3NDc0NDFDRUI3NTA0Q0UA"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_transport(
    kind: str,
    *,
    limit: int = 4,
    timeout: float = 5.0,
    ca_file: Path | None = None,
    http2: bool = False,
) -> Transport:
    if kind == "aiohttp":
        return AiohttpTransport(limit=limit, timeout=timeout, ca_file=ca_file)
    return PyreqwestTransport(limit=limit, timeout=timeout, ca_file=ca_file, http2=http2)


@asynccontextmanager
async def started(kind: str, **options: Any) -> AsyncIterator[Transport]:
    transport = make_transport(kind, **options)
    await transport.start()
    try:
        yield transport
    finally:
        await transport.close()


class FakeCloud:
    """A stand-in for ``/messages`` whose answer each test sets; it records every request,
    the client ports it saw (one per connection) and the most requests it held at once."""

    def __init__(self) -> None:
        self.url = ""
        self.requests: list[tuple[web.Request, bytes]] = []
        self.release = asyncio.Event()  # ends hanging handlers at teardown
        self.arrived = asyncio.Event()  # set by the first request
        self.respond: Handler = self.accept
        self.peers: set[Any] = set()
        self.transports: list[asyncio.Transport] = []  # aborted at teardown
        self.in_flight = 0
        self.peak = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request, await request.read()))
        self.arrived.set()
        transport = request.transport
        self.peers.add(transport.get_extra_info("peername") if transport else None)
        if transport is not None:
            self.transports.append(transport)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            return await self.respond(request)
        finally:
            self.in_flight -= 1

    @staticmethod
    async def accept(request: web.Request) -> web.StreamResponse:
        return json_response(200, success_body())


@asynccontextmanager
async def cloud_server(ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[FakeCloud]:
    fake = FakeCloud()
    app = web.Application()
    app.router.add_post("/{version}/{number}/messages", fake.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(ssl=ssl_context)
    fake.url = str(server.make_url("/"))
    try:
        yield fake
    finally:
        fake.release.set()
        await server.close()
        # A TLS connection closes with a close_notify exchange; a client whose pool is
        # dropped in another thread may never answer it, and the socket, left to the
        # collector, warned in a later test. Nothing is written after this: abort.
        for transport in fake.transports:
            transport.abort()


def success_body(**message: Any) -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "contacts": [{"input": "27821234567", "wa_id": "27821234567"}],
        "messages": [{"id": WAMID, **message}],
    }


def json_response(status: int, body: object) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def answer(status: int, body: object | bytes, content_type: str = "application/json") -> Handler:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)

    async def respond(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=raw, content_type=content_type)

    return respond


def assert_no_token(err: BaseException) -> None:
    """Neither the error nor anything chained to it shows the token."""
    seen: BaseException | None = err
    while seen is not None:
        for text in (str(seen), repr(seen), repr(seen.args), repr(vars(seen))):
            assert TOKEN not in text, f"token leaked through {type(seen).__name__}"
        seen = seen.__cause__ or seen.__context__


@asynccontextmanager
async def raw_server(reply: bytes, *, then_hang: bool = False) -> AsyncIterator[str]:
    """A TCP server that reads one request, writes ``reply`` (maybe not HTTP) and hangs up,
    or with ``then_hang`` keeps the connection open, saying nothing more."""
    hanging: list[asyncio.Event] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        if then_hang:
            hanging.append(done := asyncio.Event())
            await done.wait()
        writer.close()
        with suppress(ConnectionError):
            await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for done in hanging:
            done.set()
        server.close()
        await server.wait_closed()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@contextmanager
def unanswered_connects() -> Iterator[str]:
    """A port whose connects never complete: a listener that never accepts, its backlog full
    (Linux drops further SYNs, and the client waits as for a host that does not answer)."""
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            with suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        yield f"http://127.0.0.1:{port}"
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


@dataclass(frozen=True)
class LocalCA:
    """A CA made for the test run, and a certificate it signed for 127.0.0.1 and localhost."""

    ca_file: Path  # PEM: an unrelated CA first, then this one (a bundle, as operators have)
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context


def make_local_ca(where: Path) -> LocalCA | None:
    """A CA and a server certificate made with the openssl command (None without it)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=where, check=True, capture_output=True, timeout=60)

    for name in ("other", "ca"):
        run(
            *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-keyout", f"{name}.key", "-out", f"{name}.pem", "-subj", f"/CN=wa-test {name}"),
            *("-addext", "basicConstraints=critical,CA:TRUE"),
            *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
        )
    run(
        *("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr"),
        *("-subj", "/CN=localhost"),
    )
    (where / "server.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "extendedKeyUsage=serverAuth\n"
    )
    run(
        *("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key"),
        *("-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext"),
    )
    bundle = where / "bundle.pem"
    bundle.write_bytes((where / "other.pem").read_bytes() + (where / "ca.pem").read_bytes())
    return LocalCA(bundle, where / "server.pem", where / "server.key")


class _Http2Refusal(asyncio.Protocol):
    """Answers each complete request on an HTTP/2 connection by ``mode`` (``h2_server``)."""

    def __init__(self, mode: str, seen: list[int]) -> None:
        self._mode, self._seen = mode, seen
        self._h2 = H2Connection(H2Configuration(client_side=False))
        self._transport: asyncio.Transport | None = None
        self.lost = asyncio.Event()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.set()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # a TLS transport
        self._h2.initiate_connection()
        self._transport.write(self._h2.data_to_send())

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        close = False
        try:
            for event in self._h2.receive_data(data):
                if not isinstance(event, StreamEnded):
                    continue
                self._seen.append(event.stream_id)
                if self._mode == "refuse":
                    self._h2.reset_stream(event.stream_id, ErrorCodes.REFUSED_STREAM)
                elif self._mode == "reset":
                    self._h2.reset_stream(event.stream_id, ErrorCodes.INTERNAL_ERROR)
                elif self._mode == "goaway":  # graceful, before this stream: not processed
                    self._h2.close_connection(ErrorCodes.NO_ERROR, last_stream_id=0)
                    close = True
                elif self._mode == "goaway-covered":  # graceful, this stream included, then
                    # the connection ends before its answer: it may have been processed
                    self._h2.close_connection(ErrorCodes.NO_ERROR, last_stream_id=event.stream_id)
                    close = True
                elif self._mode == "goaway-error":  # this stream included: maybe processed
                    self._h2.close_connection(
                        ErrorCodes.INTERNAL_ERROR, last_stream_id=event.stream_id
                    )
                    close = True
        except H2ProtocolError:
            close = True
        self._transport.write(self._h2.data_to_send())
        if close:
            self._transport.close()


@asynccontextmanager
async def h2_server(mode: str, where: Path) -> AsyncIterator[tuple[str, Path, list[int]]]:
    """An HTTPS server speaking HTTP/2 only that never answers a request: it refuses its stream
    (``refuse``), resets it (``reset``), sends GOAWAY before it (``goaway``) or after it with
    an error (``goaway-error``). Yields its URL, the CA to trust, and the stream ids it saw."""
    tls = make_tls(where)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert_file, tls.key_file)
    context.set_alpn_protocols(["h2"])
    seen: list[int] = []
    connections: list[_Http2Refusal] = []

    def accept() -> _Http2Refusal:
        connections.append(_Http2Refusal(mode, seen))
        return connections[-1]

    loop = asyncio.get_running_loop()
    server = await loop.create_server(accept, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"https://127.0.0.1:{port}", tls.ca_file, seen
    finally:
        server.close()
        for connection in connections:
            connection.close()
            with suppress(TimeoutError):
                await asyncio.wait_for(connection.lost.wait(), 5)
        await server.wait_closed()
