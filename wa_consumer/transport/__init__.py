"""The Cloud API's HTTP exchange, as a seam: one POST with a bearer token, its status and body.

``GraphClient`` (``graph.py``) builds the URL and reads Meta's JSON; a ``Transport`` only
carries the bytes. Two implementations, chosen by ``WA_GRAPH_TRANSPORT``:

- ``pyreqwest``   (``transport/pyreqwest.py``, the default): Rust reqwest/hyper with rustls
  on a tokio thread, through PyPI ``pyreqwest``; under half aiohttp's CPU per request
  (README, design notes).
- ``aiohttp``     (``transport/aiohttp.py``): one ``aiohttp.ClientSession``.

Both hold the same promises, pinned by ``tests/unit/test_transport.py`` (the wire) and
``test_graph.py`` (Meta's answers) against each:

- at most ``limit`` requests at once (the prefetch), on connections kept alive (15 s idle)
  and reused; aiohttp opens at most ``limit``, pyreqwest's pool (hyper-util) may keep as many
  again idle: a send that finds none idle starts a connection and takes whichever is ready
  first, a freed one or the new one, and the other is pooled (README, design notes); no
  cookies, no proxies from the environment (aiohttp asks for gzip and decodes it, pyreqwest
  does not ask: the body handed back is plain either way);
- a total timeout per request that counts the wait for a free connection, and a connect
  timeout of half of it (at most 10 s) that also bounds that wait;
- every failure leaves as a ``GraphTransportError`` whose ``maybe_sent`` says whether the
  request may have reached Meta (SPEC §5): False for a failure before it was written (refused,
  DNS, TLS handshake, connect timeout, no free connection: ``connect_error`` or
  ``connect_timeout``) and for one HTTP/2 says the server did not process (a refused stream,
  a stream past a GOAWAY: ``unprocessed``); True for one after it may have been
  (``timeout``, ``disconnected``, ``bad_response``, ``client_error``);
- the token is only ever put in the request's header: no error text, repr or chained
  exception holds it;
- extra CA certificates (``WA_GRAPH_CA_FILE``, PEM) are trusted beside the system's.

``WA_GRAPH_HTTP2`` (pyreqwest only) offers HTTP/2 by ALPN over TLS: when the server takes it,
every send shares one connection (``limit`` still bounds the requests in flight, the server's
SETTINGS_MAX_CONCURRENT_STREAMS the streams at once).

Response headers are not returned: nothing reads them (Meta's ``fbtrace_id`` is read from the
error body), and copying them costs on every send. Lifecycle as every seam: ``start`` before
the first ``post``, ``close`` at shutdown. ``StubTransport`` answers from a script, for tests.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final, NamedTuple, Protocol

from ..errors import GraphTransportError

if TYPE_CHECKING:
    from ..settings import Settings

#: The longest connect timeout, whatever the total (aiohttp's and pyreqwest's alike).
MAX_CONNECT_SECONDS: Final = 10.0
#: How long an idle connection is kept for reuse (aiohttp's default keep-alive).
KEEPALIVE_SECONDS: Final = 15.0
USER_AGENT: Final = "wa-consumer"
CONTENT_TYPE: Final = "application/json"


class Answer(NamedTuple):
    """What came back: the HTTP status and the whole body."""

    status: int
    body: bytes


class Transport(Protocol):
    """POSTs JSON bodies with a bearer token; raises ``GraphTransportError`` without an answer."""

    name: str

    async def start(self) -> None:
        """Open the client (its pool fills as sends need connections)."""

    async def post(self, url: str, body: bytes, token: str) -> Answer:
        """POST ``body`` as ``application/json`` with ``Authorization: Bearer <token>``."""

    async def close(self) -> None:
        """Close every connection; no send is in flight by then."""


def connect_timeout(total: float) -> float:
    """Half the total, at most 10 s: a slow connect (nothing sent) is told from a slow answer."""
    return min(total / 2, MAX_CONNECT_SECONDS)


def build_transport(settings: Settings) -> Transport:
    """The transport ``WA_GRAPH_TRANSPORT`` names, sized to the prefetch (imported on demand)."""
    limit, timeout = settings.prefetch, settings.http_timeout_seconds
    ca_file = Path(settings.graph_ca_file) if settings.graph_ca_file else None
    if settings.graph_transport == "pyreqwest":
        from .pyreqwest import PyreqwestTransport

        return PyreqwestTransport(
            limit=limit, timeout=timeout, ca_file=ca_file, http2=settings.graph_http2
        )
    from .aiohttp import AiohttpTransport

    return AiohttpTransport(limit=limit, timeout=timeout, ca_file=ca_file)


Script = Callable[[str, bytes], Answer | GraphTransportError]


class StubTransport:
    """Answers each POST from ``script(url, body)`` (an ``Answer``, or an error to raise).

    Records ``(url, body)`` of every POST and how many carried a token; never the token.
    """

    name = "stub"

    def __init__(self, script: Script | Answer) -> None:
        self._script = script
        self.posts: list[tuple[str, bytes]] = []
        self.with_token = 0
        self.started = self.closed = False

    async def start(self) -> None:
        self.started = True

    async def post(self, url: str, body: bytes, token: str) -> Answer:
        self.posts.append((url, body))
        self.with_token += bool(token)
        answer = self._script if isinstance(self._script, Answer) else self._script(url, body)
        if isinstance(answer, GraphTransportError):
            raise answer
        return answer

    async def close(self) -> None:
        self.closed = True
