"""The Cloud API transport on PyPI ``pyreqwest``: Rust reqwest/hyper, rustls, a tokio thread.

Whether a request may have reached Meta is read from the error's cause chain, not from its
class: pyreqwest raises ``ConnectTimeoutError`` for a total timeout while the answer is
awaited (the request long written) and ``ConnectError`` for a connection closed before the
answer ("connection closed before message completed"). What hyper-util's client says is
``client error (Connect)`` for exactly the failures of making the connection (refused, DNS,
TLS handshake, connect timeout): only those, and a timeout waiting for a free connection of
the pool (``PoolTimeoutError``), were not sent. Over HTTP/2 (``http2``, by ALPN) the server
can also say it did not process a request (RFC 9113 §8.7): a stream refused (``REFUSED_STREAM``)
or above the last stream id of a graceful GOAWAY, which the ``h2`` crate words as in
``_UNPROCESSED``; those were not sent either. A GOAWAY with an error code is handed to every
stream left when the connection closes, processed or not, so it stays ambiguous.
tests/unit/test_transport.py pins each case, so an upgrade that changes the wording fails there.

One difference from aiohttp, pinned there too: a POST cancelled while out is not aborted;
it goes on in pyreqwest's runtime until answered or timed out, holding its connection
meanwhile (the daemon never cancels a send once claimed).
"""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from pathlib import Path
from typing import Final

from pyreqwest.client import Client, ClientBuilder
from pyreqwest.exceptions import (
    BodyDecodeError,
    BuilderError,
    DecodeError,
    DetailedPyreqwestError,
    NetworkError,
    PoolTimeoutError,
    PyreqwestError,
    RequestTimeoutError,
)

from ..errors import GraphTransportError
from . import CONTENT_TYPE, KEEPALIVE_SECONDS, USER_AGENT, Answer, connect_timeout
from .redact import bounded

#: The cause hyper-util gives every failure of making a connection (nothing was written).
_CONNECTING: Final = re.compile(r"client error \(Connect\)")
#: HTTP/2's word that the server did not process the request: a refused stream, or a stream
#: above the last id of a GOAWAY without error (the h2 crate's ``Display``; its debug data may
#: follow).
_UNPROCESSED: Final = re.compile(
    r"(stream error received: refused stream before processing any application logic"
    r"|connection error received: not a result of an error)( \(.*\))?"
)
#: Any other HTTP/2 stream or connection error: the request was out, the answer lost.
_H2_LOST: Final = re.compile(r"(stream|connection) error (received|detected): .*")
#: Causes that only wrap others, and the one that quotes the URL (kept out of error texts).
_WRAPPER: Final = re.compile(r"^(client error \(\w+\)|error sending request for url \(.*\))$")
#: After ``close``: lets the tokio thread finish calling back into Python before the process
#: may exit. On the stdlib event loop its wake-up of the loop (``call_soon_threadsafe``) lets go
#: of the GIL while it writes to the loop's socket; an exit meanwhile aborted CPython 3.11
#: ("PyGILState_Release: thread state must be current") in 5-20% of exits right after a failed
#: send, under 1% with this wait. uvloop's wake-up keeps the GIL: none in 600 such exits, and
#: the daemon runs on uvloop (tests/unit/test_transport.py exits 24 processes so).
_SETTLE_SECONDS: Final = 0.05


class PyreqwestTransport:
    """Each POST through one ``pyreqwest`` client; its errors made ``GraphTransportError``."""

    name = "pyreqwest"

    def __init__(
        self, *, limit: int, timeout: float, ca_file: Path | None = None, http2: bool = False
    ) -> None:
        self._limit, self._timeout, self._ca_file = limit, timeout, ca_file
        self._http2 = http2
        self._client: Client | None = None

    def __repr__(self) -> str:
        http2 = ", http2=True" if self._http2 else ""
        return f"PyreqwestTransport(limit={self._limit}, timeout={self._timeout}{http2})"

    async def start(self) -> None:
        if self._client is not None:
            return
        connect = timedelta(seconds=connect_timeout(self._timeout))
        builder = (
            ClientBuilder()
            .timeout(timedelta(seconds=self._timeout))  # from the wait for a connection on
            .connect_timeout(connect)
            .pool_timeout(connect)  # a free connection, as aiohttp's connect timeout bounds it
            .max_connections(self._limit)  # requests in flight (connections in use)
            # Idle ones kept: a send that found none starts a connection and takes the first
            # ready, freed or new (hyper-util), so up to this many may be idle besides.
            .pool_max_idle_per_host(self._limit)
            .pool_idle_timeout(timedelta(seconds=KEEPALIVE_SECONDS))
            .no_proxy()  # as aiohttp (trust_env off): HTTP(S)_PROXY would reroute the token
            .gzip(False)
            .brotli(False)
            .zstd(False)
            .deflate(False)
            .user_agent(USER_AGENT)
            .default_headers({"Content-Type": CONTENT_TYPE})
            .error_for_status(False)
            # h2 offered by ALPN over TLS; HTTP/1.1 when the server does not take it, and on
            # plain http:// (no h2c). One HTTP/2 connection carries every send (RFC 9113 §9.1).
            .http2(self._http2)
        )
        if self._ca_file is not None:
            builder = builder.add_root_certificate_pem(self._ca_file.read_bytes())
        self._client = builder.build()

    async def post(self, url: str, body: bytes, token: str) -> Answer:
        client = self._client
        if client is None:
            raise RuntimeError("PyreqwestTransport.start() was not called")
        try:
            request = (
                client.post(url)
                .header("Authorization", "Bearer " + token, is_sensitive=True)
                .body_bytes(body)
                .build()
            )
            response = await request.send()  # reads the whole body
            return Answer(response.status, bytes(await response.bytes()))
        except PyreqwestError as exc:
            # Not chained: its causes quote the URL (a password in WA_GRAPH_API_URL would
            # follow the error into logs); what matters of them is in the message below.
            error = translate(exc, token)
        raise error

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()
            await asyncio.sleep(_SETTLE_SECONDS)


def translate(exc: PyreqwestError, token: str) -> GraphTransportError:
    """A failure without a usable answer, with whether the request may have reached Meta."""
    causes = _causes(exc)
    maybe_sent = True
    if isinstance(exc, PoolTimeoutError):
        maybe_sent, short, what = False, "connect_timeout", "no free connection in time"
    elif any(_CONNECTING.fullmatch(c) for c in causes):
        maybe_sent = False
        if isinstance(exc, RequestTimeoutError):
            short, what = "connect_timeout", "connecting timed out"
        else:
            short, what = "connect_error", f"cannot connect: {_said(causes)}"
    elif any(_UNPROCESSED.fullmatch(c) for c in causes):
        maybe_sent, short = False, "unprocessed"
        what = f"the server did not process the request ({_said(causes)})"
    elif isinstance(exc, BuilderError):
        maybe_sent, short, what = False, "client_error", f"bad request: {_said(causes)}"
    elif isinstance(exc, RequestTimeoutError):
        short, what = "timeout", "no answer in time after the request was sent"
    elif isinstance(exc, NetworkError | BodyDecodeError) or any(
        _H2_LOST.fullmatch(c) for c in causes
    ):
        short, what = "disconnected", f"the connection dropped ({_said(causes)})"
    elif isinstance(exc, DecodeError):
        short, what = "bad_response", f"unusable HTTP answer ({_said(causes)})"
    else:
        short, what = "client_error", f"{type(exc).__name__}: {_said(causes)}"
    return GraphTransportError(bounded(what, token), maybe_sent=maybe_sent, short_code=short)


def _causes(exc: PyreqwestError) -> list[str]:
    if not isinstance(exc, DetailedPyreqwestError):
        return [exc.message]
    causes = exc.details.get("causes") or []
    return [str(c.get("message", "")) for c in causes] or [exc.message]


def _said(causes: list[str]) -> str:
    """The causes that say something, the URL left out: ``tcp connect error: refused``."""
    return ": ".join(c for c in causes if c and not _WRAPPER.fullmatch(c)) or "no detail"
