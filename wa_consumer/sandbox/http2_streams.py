"""One HTTP/2 connection of the sandbox: each stream an aiohttp request (``sandbox/http2.py``).

A stream's request is made by the application's own request factory with ``_Stream`` as its
protocol object and ``_StreamWriter`` as its writer, and answered by the application's
handler; the writer turns the response into HEADERS and DATA frames within the peer's
flow-control windows. A handler that closes ``request.transport`` resets its stream alone.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Final, cast

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import HttpVersion, RawRequestMessage
from aiohttp.streams import StreamReader
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import ProtocolError, StreamClosedError
from h2.settings import SettingCodes, Settings
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from wa_consumer.logs import get_logger
from wa_consumer.sandbox.connections import ConnectionCount

HTTP2: Final = HttpVersion(2, 0)
#: Connection-specific headers, which HTTP/2 forbids (RFC 9113 §8.2.2).
_HOP_BY_HOP: Final = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"}
)
_READ_LIMIT: Final = 2**16
log = get_logger("sandbox")


class _Gone(Exception):
    """The stream was reset or the connection lost: nothing more can be written."""


class _StreamTransport(asyncio.Transport):
    """``request.transport`` of a stream: closing it resets that stream, not the connection."""

    def __init__(self, connection: Http2Connection, stream_id: int) -> None:
        super().__init__()
        self._connection, self._id = connection, stream_id

    def close(self) -> None:
        self._connection.reset(self._id, ErrorCodes.CANCEL)

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self._id not in self._connection.streams

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._connection.info(name, default)


class _Stream:
    """One request, as aiohttp's request and ``StreamReader`` see their protocol object."""

    max_field_size = 8190  # aiohttp's defaults, read by multipart parsing
    max_headers = 128

    def __init__(self, connection: Http2Connection, stream_id: int) -> None:
        self.stream_id = stream_id
        self.transport = _StreamTransport(connection, stream_id)
        self.ssl_context = connection.info("sslcontext")
        self.peername = connection.info("peername")
        self.sockname = connection.info("sockname")
        self.connected = True
        self.payload = StreamReader(cast(Any, self), _READ_LIMIT, loop=connection.loop)
        self.task: asyncio.Task[None] | None = None

    # HTTP/2 flow control bounds what a client sends ahead; nothing to pause here.
    def pause_reading(self) -> None:
        pass

    def resume_reading(self, resume_parser: bool = True) -> None:
        pass


class _StreamWriter(AbstractStreamWriter):
    """Writes an aiohttp response as HEADERS and DATA frames of its stream."""

    def __init__(self, connection: Http2Connection, stream_id: int) -> None:
        self._connection, self._id = connection, stream_id
        self._headers: list[tuple[str, str]] | None = None
        self._headers_sent = False

    async def write_headers(self, status_line: str, headers: CIMultiDict[str]) -> None:
        status = status_line.split(" ", 2)[1]
        self._headers = [(":status", status)]
        self._headers += [
            (name.lower(), value)
            for name, value in headers.items()
            if name.lower() not in _HOP_BY_HOP
        ]

    def send_headers(self) -> None:
        self._send_headers(end=False)

    def _send_headers(self, *, end: bool) -> None:
        if self._headers_sent or self._headers is None:
            return
        self._headers_sent = True
        self._connection.send_headers(self._id, self._headers, end=end)

    async def write(self, chunk: bytes | bytearray | memoryview) -> None:
        if not chunk:
            return
        self._send_headers(end=False)
        self.output_size += len(chunk)
        await self._connection.send_data(self._id, bytes(chunk), end=False)

    async def write_eof(self, chunk: bytes = b"") -> None:
        if not self._headers_sent and not chunk:
            self._send_headers(end=True)  # one HEADERS frame, the stream ended
            return
        self._send_headers(end=False)
        self.output_size += len(chunk)
        await self._connection.send_data(self._id, chunk, end=True)

    async def drain(self) -> None:
        await self._connection.drain()

    def enable_compression(self, encoding: str = "deflate", strategy: int | None = None) -> None:
        raise NotImplementedError("the sandbox does not compress HTTP/2 answers")

    def enable_chunking(self) -> None:
        pass  # DATA frames delimit the body


class Http2Connection(asyncio.Protocol):
    """One HTTP/2 connection: each stream a task through the aiohttp application."""

    def __init__(
        self,
        server: web.Server,
        *,
        count: ConnectionCount,
        max_streams: int,
        live: set[Http2Connection],
    ) -> None:
        self._server, self._count, self._live = server, count, live
        self.loop = asyncio.get_running_loop()
        self._h2 = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))
        self._h2.local_settings = Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: max_streams,
                SettingCodes.MAX_HEADER_LIST_SIZE: 65536,
            },
        )
        self.streams: dict[int, _Stream] = {}
        self._transport: asyncio.Transport | None = None
        self._window = asyncio.Event()  # set when a flow-control window may have grown
        self._writable = asyncio.Event()
        self._writable.set()
        self._flush_soon: asyncio.Handle | None = None
        self._closed = asyncio.Event()

    def info(self, name: str, default: Any = None) -> Any:
        transport = self._transport
        return default if transport is None else transport.get_extra_info(name, default)

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._count.made(transport, h2=True)
        self._live.add(self)
        self._h2.initiate_connection()
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self._h2.receive_data(data)
        except ProtocolError:
            self._flush()  # h2 has queued the GOAWAY
            self._close()
            return
        for event in events:
            if isinstance(event, RequestReceived):
                self._begin(event)
            elif isinstance(event, DataReceived):
                self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.payload.feed_data(event.data)
            elif isinstance(event, StreamEnded):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.payload.feed_eof()
            elif isinstance(event, StreamReset):
                self._forget(event.stream_id)
            elif isinstance(event, WindowUpdated | RemoteSettingsChanged):
                self._window.set()
            elif isinstance(event, ConnectionTerminated) and not self.streams:
                self._close()  # the client is done; with streams open, it closes when it is
        self._flush()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._transport = None
        self._count.lost()
        self._live.discard(self)
        for stream_id in list(self.streams):
            self._forget(stream_id)
        self._window.set()
        self._writable.set()
        self._closed.set()

    # -- streams -----------------------------------------------------------------------------

    def _begin(self, event: RequestReceived) -> None:
        method = path = authority = ""
        fields: list[tuple[str, str]] = []
        for raw_name, raw_value in event.headers:
            name, value = str(raw_name), str(raw_value)  # str: header_encoding is set
            if not name.startswith(":"):
                fields.append((name, value))
            elif name == ":method":
                method = value
            elif name == ":path":
                path = value
            elif name == ":authority":
                authority = value
        if authority and not any(name == "host" for name, _ in fields):
            fields.append(("host", authority))
        headers = CIMultiDict(fields)
        message = RawRequestMessage(
            method,
            path,
            HTTP2,
            CIMultiDictProxy(headers),
            tuple((name.encode(), value.encode()) for name, value in fields),
            False,  # should_close: the connection outlives the stream
            None,
            False,
            False,
            _url(path),
        )
        stream = _Stream(self, event.stream_id)
        self.streams[event.stream_id] = stream
        stream.task = self.loop.create_task(self._answer(stream, message))

    async def _answer(self, stream: _Stream, message: RawRequestMessage) -> None:
        writer = _StreamWriter(self, stream.stream_id)
        task = asyncio.current_task()
        assert task is not None
        # aiohttp's request types the protocol as its own RequestHandler; ``_Stream`` has
        # every attribute a request and its payload read of it (module docstring).
        request = self._server.request_factory(
            message, stream.payload, cast(Any, stream), writer, task
        )
        try:
            try:
                response = await self._server.request_handler(request)
            except web.HTTPException as exc:  # raised by a handler: answered, as aiohttp does
                response = exc
            except _Gone:
                raise
            except Exception as exc:  # noqa: BLE001 - a 500, as aiohttp's server answers
                log.warning("sandbox_handler_failed", protocol="h2", error=repr(exc))
                response = web.Response(status=500, text="500 Internal Server Error")
            await response.prepare(request)
            await response.write_eof()
        except asyncio.CancelledError:
            # A handler that dropped its request (a hang), or the client reset the stream.
            self.reset(stream.stream_id, ErrorCodes.CANCEL)
            if task.cancelling() and stream.stream_id in self.streams:
                raise  # cancelled from outside (shutdown), not by this stream's end
        except _Gone:
            pass
        except ProtocolError as exc:  # an answer h2 refuses to frame (a handler's bug)
            log.warning("sandbox_answer_unframed", protocol="h2", error=repr(exc))
            self.reset(stream.stream_id, ErrorCodes.INTERNAL_ERROR)
        finally:
            self.streams.pop(stream.stream_id, None)
            stream.connected = False

    def _forget(self, stream_id: int) -> None:
        """The stream is over from the client's side: stop its handler."""
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            return
        stream.connected = False
        stream.payload.feed_eof()
        if stream.task is not None and not stream.task.done():
            stream.task.cancel()
        self._window.set()  # a writer waiting on its window gives up

    def reset(self, stream_id: int, code: ErrorCodes) -> None:
        """RST_STREAM, unless the stream is already closed."""
        if self._transport is None:
            return
        with contextlib.suppress(ProtocolError, StreamClosedError):
            self._h2.reset_stream(stream_id, code)
            self._want_flush()

    # -- writing -----------------------------------------------------------------------------

    def send_headers(self, stream_id: int, headers: list[tuple[str, str]], *, end: bool) -> None:
        if stream_id not in self.streams or self._transport is None:
            raise _Gone
        try:
            self._h2.send_headers(stream_id, headers, end_stream=end)
        except StreamClosedError as exc:
            raise _Gone from exc
        self._want_flush()

    async def send_data(self, stream_id: int, data: bytes, *, end: bool) -> None:
        """The body, in frames as the peer's flow-control windows allow."""
        h2 = self._h2
        view = memoryview(data)
        while True:
            if stream_id not in self.streams or self._transport is None:
                raise _Gone
            try:
                if not view:
                    if end:
                        h2.end_stream(stream_id)
                    break
                size = min(
                    len(view), h2.local_flow_control_window(stream_id), h2.max_outbound_frame_size
                )
                if size > 0:
                    last = end and size == len(view)
                    h2.send_data(stream_id, view[:size].tobytes(), end_stream=last)
                    view = view[size:]
                    if last:
                        break
                    continue
            except StreamClosedError as exc:
                raise _Gone from exc
            self._want_flush()
            self._window.clear()
            await self._window.wait()
        self._want_flush()

    async def drain(self) -> None:
        await self._writable.wait()

    def _want_flush(self) -> None:
        # One write per loop turn for every stream that answered in it.
        if self._flush_soon is None:
            self._flush_soon = self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        if self._flush_soon is not None:
            self._flush_soon.cancel()
            self._flush_soon = None
        data = self._h2.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    # -- closing -----------------------------------------------------------------------------

    def go_away(self) -> None:
        """GOAWAY: no new streams; those open may finish (``finished``)."""
        if self._transport is None:
            return
        with contextlib.suppress(ProtocolError):
            self._h2.close_connection(ErrorCodes.NO_ERROR)
            self._flush()

    async def finished(self, grace: float) -> None:
        """Wait for the open streams (at most ``grace`` seconds), then close."""
        tasks = [s.task for s in self.streams.values() if s.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
        self._flush()
        self._close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closed.wait(), 1.0)

    def _close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()


def _url(path: str) -> URL:
    """The request target as aiohttp's HTTP/1.1 parser makes it of an origin-form path."""
    if not path.startswith("/"):
        return URL(path, encoded=True)
    path, _, fragment = path.partition("#")
    path, _, query = path.partition("?")
    return URL.build(path=path, query_string=query, fragment=fragment, encoded=True)
