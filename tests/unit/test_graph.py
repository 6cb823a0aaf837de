"""The Cloud API client against a real local HTTP server (and raw TCP ones for broken answers)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from wa_consumer.classify import Category, classify
from wa_consumer.errors import GraphApiError, GraphError, GraphTransportError
from wa_consumer.graph import MAX_ERROR_BYTES, GraphClient, SendResult, make_session

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


class FakeCloud:
    """A stand-in for ``/messages`` whose answer each test sets; it records every request."""

    def __init__(self) -> None:
        self.url = ""
        self.requests: list[tuple[web.Request, bytes]] = []
        self.release = asyncio.Event()  # ends hanging handlers at teardown
        self.respond: Handler = self.accept

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request, await request.read()))
        return await self.respond(request)

    @staticmethod
    async def accept(request: web.Request) -> web.StreamResponse:
        return json_response(200, success_body())


def success_body(**message: Any) -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "contacts": [{"input": "27821234567", "wa_id": "27821234567"}],
        "messages": [{"id": WAMID, **message}],
    }


def meta_error(
    code: int,
    message: str = "(#131000) Something went wrong",
    *,
    subcode: int | None = None,
    is_transient: bool | None = None,
    details: str | None = None,
) -> dict[str, Any]:
    error: dict[str, Any] = {
        "message": message,
        "type": "OAuthException",
        "code": code,
        "fbtrace_id": "Az8or2yhqkZfEZ-_4Qn_Bam",
    }
    if subcode is not None:
        error["error_subcode"] = subcode
    if is_transient is not None:
        error["is_transient"] = is_transient
    if details is not None:
        error["error_data"] = {"messaging_product": "whatsapp", "details": details}
    return {"error": error}


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


@pytest.fixture
async def cloud() -> AsyncIterator[FakeCloud]:
    fake = FakeCloud()
    app = web.Application()
    app.router.add_post("/{version}/{number}/messages", fake.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    fake.url = str(server.make_url("/"))
    yield fake
    fake.release.set()
    await server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    s = make_session(limit=4, timeout=5.0)
    yield s
    await s.close()


@pytest.fixture
def client(cloud: FakeCloud, session: aiohttp.ClientSession) -> GraphClient:
    return GraphClient(session, cloud.url, "v23.0")


async def send_error(client: GraphClient) -> GraphError:
    with pytest.raises(GraphError) as caught:
        await client.send(NUMBER, TOKEN, PAYLOAD)
    assert_no_token(caught.value)
    return caught.value


@asynccontextmanager
async def raw_server(reply: bytes) -> AsyncIterator[str]:
    """A TCP server that reads one request, writes ``reply`` (maybe not HTTP) and hangs up."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- success ---------------------------------------------------------------------------------


async def test_accepted_message_returns_its_wamid(client: GraphClient, cloud: FakeCloud) -> None:
    result = await client.send(NUMBER, TOKEN, PAYLOAD)

    assert result == SendResult(WAMID, 200, result.latency_ms, None)
    assert result.latency_ms > 0
    (request, body), *_ = cloud.requests
    assert request.path == f"/v23.0/{NUMBER}/messages"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Content-Type"] == "application/json"
    assert body == PAYLOAD  # sent unchanged
    assert not request.cookies


async def test_paced_template_reports_its_message_status(
    client: GraphClient, cloud: FakeCloud
) -> None:
    cloud.respond = answer(200, success_body(message_status="held_for_quality_assessment"))
    result = await client.send(NUMBER, TOKEN, PAYLOAD)
    assert (result.wamid, result.message_status) == (WAMID, "held_for_quality_assessment")


async def test_read_receipt_success_has_no_wamid(client: GraphClient, cloud: FakeCloud) -> None:
    cloud.respond = answer(200, {"success": True})
    result = await client.send(NUMBER, TOKEN, b'{"messaging_product":"whatsapp","status":"read"}')
    assert (result.wamid, result.status) == ("", 200)


async def test_base_url_with_a_trailing_slash_and_the_url_is_built_once_per_number(
    cloud: FakeCloud, session: aiohttp.ClientSession
) -> None:
    client = GraphClient(session, cloud.url + "/", "v23.0")
    assert client.url_for(NUMBER) == f"{cloud.url.rstrip('/')}/v23.0/{NUMBER}/messages"
    assert client.url_for(NUMBER) is client.url_for(NUMBER)
    await client.send(NUMBER, TOKEN, PAYLOAD)
    assert cloud.requests[0][0].path == f"/v23.0/{NUMBER}/messages"


# -- Meta errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "subcode", "is_transient", "category"),
    [
        (500, 131000, None, True, Category.TRANSIENT),
        (400, 131057, None, None, Category.TRANSIENT),
        (400, 130429, 2494055, True, Category.RATE_LIMITED),
        (400, 131056, None, None, Category.RATE_LIMITED),
        (401, 190, 463, None, Category.AUTH),
        (400, 368, None, False, Category.ACCOUNT),
        (400, 131048, None, None, Category.ACCOUNT),
        (400, 131026, None, False, Category.PERMANENT),
        (400, 131047, None, None, Category.PERMANENT),
    ],
)
async def test_meta_error_is_parsed_and_classified(
    client: GraphClient,
    cloud: FakeCloud,
    status: int,
    code: int,
    subcode: int | None,
    is_transient: bool | None,
    category: Category,
) -> None:
    message = f"(#{code}) Meta says no"
    cloud.respond = answer(
        status,
        meta_error(code, message, subcode=subcode, is_transient=is_transient, details="why"),
    )
    err = await send_error(client)

    assert isinstance(err, GraphApiError)
    assert (err.status, err.code, err.subcode) == (status, code, subcode)
    assert err.is_transient is is_transient
    assert err.fbtrace_id == "Az8or2yhqkZfEZ-_4Qn_Bam"
    assert err.message == f"{message}: why"
    assert err.code_text == str(code)
    assert not err.maybe_sent
    assert classify(err) is category


async def test_expired_token_is_an_auth_error(client: GraphClient, cloud: FakeCloud) -> None:
    cloud.respond = answer(
        401,
        meta_error(190, "Error validating access token: Session has expired", subcode=463),
    )
    err = await send_error(client)
    assert (err.status, err.code, err.subcode) == (401, 190, 463)
    assert "Session has expired" in err.message
    assert classify(err) is Category.AUTH


async def test_long_meta_message_is_cut_to_a_kibibyte(
    client: GraphClient, cloud: FakeCloud
) -> None:
    cloud.respond = answer(400, meta_error(100, "é" * 5000))
    err = await send_error(client)
    assert len(err.message.encode()) <= MAX_ERROR_BYTES
    assert err.message.startswith("é" * 100)
    assert err.message.endswith("...")


# -- answers that are not Meta's -------------------------------------------------------------


async def test_proxy_html_502_page(client: GraphClient, cloud: FakeCloud) -> None:
    page = b"<html>\n <head><title>502 Bad Gateway</title></head>\n<body>" + b"x" * 500
    cloud.respond = answer(502, page, "text/html")
    err = await send_error(client)

    assert isinstance(err, GraphApiError)
    assert (err.status, err.code) == (502, None)
    assert err.message.startswith(
        "HTTP 502 with a non-JSON body: <html> <head><title>502 Bad Gateway</title></head>"
    )
    assert len(err.message) == len("HTTP 502 with a non-JSON body: ") + 200
    assert err.code_text == "502"
    assert classify(err) is Category.TRANSIENT


@pytest.mark.parametrize(
    ("status", "category"), [(503, Category.TRANSIENT), (400, Category.PERMANENT)]
)
async def test_empty_body(
    client: GraphClient, cloud: FakeCloud, status: int, category: Category
) -> None:
    cloud.respond = answer(status, b"")
    err = await send_error(client)
    assert isinstance(err, GraphApiError)
    assert err.message == f"HTTP {status} with an empty body"
    assert classify(err) is category


async def test_json_that_is_not_a_meta_error(client: GraphClient, cloud: FakeCloud) -> None:
    cloud.respond = answer(404, {"detail": "Not Found"})
    err = await send_error(client)
    assert err.message == 'HTTP 404 with an unexpected JSON body: {"detail":"Not Found"}'
    assert classify(err) is Category.PERMANENT


@pytest.mark.parametrize(
    "body", [{"messaging_product": "whatsapp"}, {"messages": []}, {"messages": [{}]}, b"OK"]
)
async def test_200_without_a_wamid_is_an_ambiguous_error(
    client: GraphClient, cloud: FakeCloud, body: object
) -> None:
    cloud.respond = answer(200, body)
    err = await send_error(client)
    assert isinstance(err, GraphApiError)
    assert err.status == 200
    assert err.maybe_sent  # Meta may have taken it
    assert err.short_code == "no_wamid"
    assert classify(err) is Category.TRANSIENT


async def test_proxy_echoing_the_token_gets_it_redacted(
    client: GraphClient, cloud: FakeCloud
) -> None:
    async def echo(request: web.Request) -> web.StreamResponse:
        page = f"<h1>Bad gateway</h1><pre>{request.headers['Authorization']}</pre>"
        return web.Response(status=502, text=page, content_type="text/html")

    cloud.respond = echo
    err = await send_error(client)
    assert "Bearer [redacted]" in err.message


@pytest.mark.parametrize("at", [150, 180, 190, 195, 199, 200, 230])
async def test_a_token_across_the_excerpts_end_leaves_no_prefix(
    client: GraphClient, cloud: FakeCloud, at: int
) -> None:
    # A proxy echoes the header at some offset of a long page; the excerpt ends at 200.
    body = b"x" * at + TOKEN.encode() + b" and more" * 40
    cloud.respond = answer(502, body, "text/html")
    err = await send_error(client)
    assert err.message.startswith("HTTP 502 with a non-JSON body: xxx")
    assert TOKEN[:6] not in err.message


@pytest.mark.parametrize("at", [0, 140, 160, 170])
async def test_a_token_across_the_excerpts_end_of_a_json_body_leaves_no_prefix(
    client: GraphClient, cloud: FakeCloud, at: int
) -> None:
    cloud.respond = answer(400, {"detail": "x" * at, "echo": f"Bearer {TOKEN}"})
    err = await send_error(client)
    assert TOKEN[:6] not in err.message


async def test_a_token_with_a_nul_in_it_is_still_redacted(
    client: GraphClient, cloud: FakeCloud
) -> None:
    torn = f"{TOKEN[:10]}\x00{TOKEN[10:]}"
    cloud.respond = answer(400, meta_error(100, f"bad token {torn}"))
    err = await send_error(client)
    assert err.message == "bad token [redacted]"


async def test_control_characters_are_stripped_from_meta_error_text(
    client: GraphClient, cloud: FakeCloud
) -> None:
    error = meta_error(131000, "Something\x00 went\x07 wrong\r\n\tsee\x1b[0m", details="a\x00b")
    error["error"]["fbtrace_id"] = "Az8\x00or2"
    cloud.respond = answer(500, error)
    err = await send_error(client)
    assert err.message == "Something went wrong\n\tsee[0m: ab"
    assert err.fbtrace_id == "Az8or2"


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"bad\x00 gateway\x01", "text/plain"),
        (b'{"detail": "nul\\u0000 here"}', "application/json"),
    ],
)
async def test_control_characters_are_stripped_from_other_bodies(
    client: GraphClient, cloud: FakeCloud, body: bytes, content_type: str
) -> None:
    cloud.respond = answer(502, body, content_type)
    err = await send_error(client)
    assert not any(ord(c) < 32 and c not in "\t\n" for c in err.message), err.message


@pytest.mark.parametrize(
    ("raw", "kept"),
    [
        (2**31 - 1, 2**31 - 1),
        (-(2**31), -(2**31)),
        (2**31, None),
        (-(2**31) - 1, None),
        (2**62, None),
        ("2494055", 2494055),
        (" 463 ", 463),
        ("99999999999", None),
        ("--5", None),
        ("\u00b2", None),  # a digit to str.isdigit, not to int()
        ("1" * 5000, None),
        (True, None),
        (1.5, None),
    ],
)
async def test_codes_outside_32_bits_are_not_kept_as_numbers(
    client: GraphClient, cloud: FakeCloud, raw: object, kept: int | None
) -> None:
    error = meta_error(131000, "odd codes")
    error["error"]["code"] = raw
    error["error"]["error_subcode"] = raw
    cloud.respond = answer(400, error)
    err = await send_error(client)
    assert (err.code, err.subcode) == (kept, kept)
    if isinstance(raw, int) and kept is None and not isinstance(raw, bool):
        assert f"[code {raw}]" in err.message
        assert f"[error_subcode {raw}]" in err.message


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"", "application/json"),
        (b"<html>401 Authorization Required</html>", "text/html"),
        (b'{"detail": "unauthorized"}', "application/json"),
    ],
)
async def test_a_401_without_a_meta_code_is_an_auth_error(
    client: GraphClient, cloud: FakeCloud, body: bytes, content_type: str
) -> None:
    cloud.respond = answer(401, body, content_type)
    err = await send_error(client)
    assert (err.status, err.code) == (401, None)
    assert classify(err) is Category.AUTH


# -- no usable answer ------------------------------------------------------------------------


async def test_connection_refused_was_not_sent(session: aiohttp.ClientSession) -> None:
    client = GraphClient(session, f"http://127.0.0.1:{closed_port()}", "v23.0")
    err = await send_error(client)

    assert isinstance(err, GraphTransportError)
    assert not err.maybe_sent
    assert err.short_code == err.code_text == "connect_error"
    assert (err.status, err.code) == (None, None)
    assert classify(err) is Category.TRANSIENT


async def test_unknown_host_was_not_sent(session: aiohttp.ClientSession) -> None:
    client = GraphClient(session, "http://no-such-host.invalid", "v23.0")
    err = await send_error(client)
    assert isinstance(err, GraphTransportError)
    assert not err.maybe_sent
    assert err.short_code in ("connect_error", "connect_timeout")  # a slow resolver times out


async def test_answer_that_never_comes_may_have_been_sent(cloud: FakeCloud) -> None:
    async def hang(request: web.Request) -> web.StreamResponse:
        await cloud.release.wait()
        return web.Response(status=200)

    cloud.respond = hang
    session = make_session(limit=2, timeout=0.3)
    try:
        err = await send_error(GraphClient(session, cloud.url, "v23.0"))
    finally:
        await session.close()

    assert isinstance(err, GraphTransportError)
    assert err.maybe_sent
    assert err.short_code == err.code_text == "timeout"
    assert len(cloud.requests) == 1  # the request did arrive
    assert classify(err) is Category.TRANSIENT


@pytest.mark.parametrize(
    "reply",
    [b"", b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 90\r\n\r\n{"mes'],
    ids=["hang-up-before-answering", "hang-up-mid-body"],
)
async def test_connection_dropped_after_sending_may_have_been_sent(
    session: aiohttp.ClientSession, reply: bytes
) -> None:
    async with raw_server(reply) as url:
        err = await send_error(GraphClient(session, url, "v23.0"))
    assert isinstance(err, GraphTransportError)
    assert (err.maybe_sent, err.short_code) == (True, "disconnected")


async def test_garbage_answer_does_not_chain_aiohttps_error_holding_the_headers(
    session: aiohttp.ClientSession,
) -> None:
    # aiohttp's ClientResponseError repr shows the request headers, token included.
    async with raw_server(b"garbage\r\n\r\n") as url:
        err = await send_error(GraphClient(session, url, "v23.0"))
    assert isinstance(err, GraphTransportError)
    assert (err.maybe_sent, err.short_code) == (True, "bad_response")
    assert err.__cause__ is None
    assert err.__context__ is None


# -- the session -----------------------------------------------------------------------------


async def test_session_is_sized_to_the_prefetch_with_explicit_timeouts() -> None:
    session = make_session(limit=7, timeout=3.0)
    try:
        connector = session.connector
        assert isinstance(connector, aiohttp.TCPConnector)
        assert (connector.limit, connector.limit_per_host) == (7, 7)
        assert isinstance(session.cookie_jar, aiohttp.DummyCookieJar)
        timeout = session.timeout
        assert (timeout.total, timeout.sock_read) == (3.0, None)  # the total bounds the answer
        assert timeout.connect is not None
        assert 0 < timeout.connect < 3.0
    finally:
        await session.close()


def test_client_repr_shows_no_token(client: GraphClient) -> None:
    assert "GraphClient(" in repr(client)
