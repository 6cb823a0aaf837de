"""The Cloud API transport on one ``aiohttp.ClientSession`` (and the session maker).

``make_session`` is also the tenant service's session (``consumer.build_credentials``).
"""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp

from ..errors import GraphTransportError
from . import CONTENT_TYPE, KEEPALIVE_SECONDS, USER_AGENT, Answer, connect_timeout
from .redact import bounded


def make_session(
    *, limit: int, timeout: float, ssl_context: ssl.SSLContext | None = None
) -> aiohttp.ClientSession:
    """An HTTP session, its pool sized to the messages in flight.

    ``limit`` is the prefetch: more connections than messages in flight are never needed,
    and they go to one host. No cookie jar: the Cloud API is stateless and cookies would only
    cost a lookup per request. The connect timeout is shorter than the total so that a slow
    connect (nothing sent, safe to retry) is told apart from a slow answer (ambiguous). No
    read timeout: one as long as the total never fires first, and it costs a timer moved on
    every read.
    """
    connector = aiohttp.TCPConnector(
        limit=limit,
        limit_per_host=limit,
        ttl_dns_cache=300,
        keepalive_timeout=KEEPALIVE_SECONDS,
        ssl=ssl_context if ssl_context is not None else True,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout, connect=connect_timeout(timeout)),
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"User-Agent": USER_AGENT},
        raise_for_status=False,
    )


def trusting(ca_file: Path | None) -> ssl.SSLContext | None:
    """The system's CA certificates plus those of ``ca_file``; None: aiohttp's default."""
    if ca_file is None:
        return None
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=ca_file)
    return context


class AiohttpTransport:
    """Each POST on the one session; aiohttp's errors made ``GraphTransportError``."""

    name = "aiohttp"

    def __init__(self, *, limit: int, timeout: float, ca_file: Path | None = None) -> None:
        self._limit, self._timeout, self._ca_file = limit, timeout, ca_file
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"AiohttpTransport(limit={self._limit}, timeout={self._timeout})"

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("AiohttpTransport.start() was not called")
        return self._session

    async def start(self) -> None:
        if self._session is None:
            self._session = make_session(
                limit=self._limit, timeout=self._timeout, ssl_context=trusting(self._ca_file)
            )

    async def post(self, url: str, body: bytes, token: str) -> Answer:
        headers = {"Authorization": "Bearer " + token, "Content-Type": CONTENT_TYPE}
        try:
            async with self.session.post(url, data=body, headers=headers) as resp:
                return Answer(resp.status, await resp.read())
        except aiohttp.ClientResponseError as exc:
            # Its repr carries request_info, whose headers hold the token: do not chain it.
            # Raised below, outside this block, so that it is not even the __context__.
            error = translate(exc, token)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise translate(exc, token) from exc
        raise error

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def translate(exc: BaseException, token: str) -> GraphTransportError:
    """A failure without a usable answer, with whether the request may have reached Meta."""
    maybe_sent = True
    if isinstance(exc, aiohttp.ClientConnectorError):
        # Refused, unreachable, DNS, TLS handshake: nothing was sent.
        maybe_sent, short, what = False, "connect_error", str(exc)
    elif isinstance(exc, aiohttp.ConnectionTimeoutError):
        # Connecting, or waiting for a free connection of the pool: nothing was sent.
        maybe_sent, short, what = False, "connect_timeout", "connecting timed out"
    elif isinstance(exc, TimeoutError):
        short, what = "timeout", "no answer in time after the request was sent"
    elif isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        short, what = "disconnected", f"the connection dropped ({type(exc).__name__})"
    elif isinstance(exc, aiohttp.ClientResponseError):
        short, what = "bad_response", f"unusable HTTP answer ({exc.status}, {exc.message})"
    elif isinstance(exc, aiohttp.ClientOSError):
        short, what = (
            "disconnected",
            f"the connection failed ({exc.strerror or type(exc).__name__})",
        )
    else:
        short, what = "client_error", type(exc).__name__
    return GraphTransportError(bounded(what, token), maybe_sent=maybe_sent, short_code=short)
