"""A TCP proxy for fault injection in front of a real server (RabbitMQ, PostgreSQL, Redis,
an HTTP service), so a test can take a server away from the daemon without touching the
shared server itself.

``cut()`` aborts every open connection (both sides, as a network failure would);
``refuse()`` stops listening, so new connections get ``ECONNREFUSED``; ``accept()`` listens
again on the same port; ``outage(seconds)`` is the three in a row and says when it ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from dataclasses import dataclass

from yarl import URL


@dataclass
class Fault:
    """When a fault began and ended (``time.time()``, the sandbox's clock)."""

    name: str
    start: float
    end: float = 0.0
    cut: int = 0  # connections aborted when it began
    sent_before: int = 0  # messages sent when it began (set by the scenario)

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            with contextlib.suppress(Exception):
                sock = writer.get_extra_info("socket")
                if sock is not None:  # RST, not FIN: the peer sees a broken connection
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target``; see the module docstring."""

    def __init__(self, target_host: str, target_port: int, name: str = "proxy") -> None:
        self.target = (target_host, target_port)
        self.name = name
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.accepted = 0
        self.cut_total = 0

    @classmethod
    def before(cls, url: str, name: str) -> TcpProxy:
        """A proxy for the server of ``url`` (its host and port)."""
        parsed = URL(url)
        assert parsed.port is not None, url
        return cls(parsed.host or "127.0.0.1", parsed.port, name)

    def route(self, url: str) -> str:
        """``url`` with its host and port replaced by this proxy's."""
        return str(URL(url).with_host("127.0.0.1").with_port(self.port))

    async def start(self) -> TcpProxy:
        await self._listen()
        return self

    async def _listen(self) -> None:
        for _ in range(50):
            try:
                self._server = await asyncio.start_server(
                    self._accept, "127.0.0.1", self.port, reuse_address=True
                )
            except OSError:  # the port is briefly not free again: try once more shortly
                await asyncio.sleep(0.1)
                continue
            self.port = self._server.sockets[0].getsockname()[1]
            return
        raise RuntimeError(f"{self.name}: cannot listen on port {self.port} again")

    @property
    def refusing(self) -> bool:
        return self._server is None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.accepted += 1
        link = _Link(writer, up_writer)
        self._links.add(link)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst, link))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, link: _Link
    ) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(Exception):
                dst.close()
            self._links.discard(link)

    def cut(self) -> int:
        """Abort every open connection; returns how many there were."""
        links = list(self._links)
        self._links.clear()
        for link in links:
            link.abort()
        self.cut_total += len(links)
        return len(links)

    def refuse(self) -> None:
        """Stop listening: new connections are refused until ``accept()``."""
        if self._server is not None:
            self._server.close()
            self._server = None

    async def accept(self) -> None:
        """Listen again, on the same port."""
        if self._server is None:
            await self._listen()

    def down(self, name: str = "") -> Fault:
        """Refuse new connections and cut the open ones; the fault begins now."""
        self.refuse()
        fault = Fault(name or f"{self.name} down", time.time())
        fault.cut = self.cut()
        return fault

    async def up(self, fault: Fault) -> Fault:
        await self.accept()
        fault.end = time.time()
        return fault

    async def outage(self, seconds: float, name: str = "") -> Fault:
        """Down for ``seconds`` (the fault's length, not a wait for something), then up."""
        fault = self.down(name)
        await asyncio.sleep(seconds)
        return await self.up(fault)

    async def close(self) -> None:
        self.refuse()
        self.cut()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
