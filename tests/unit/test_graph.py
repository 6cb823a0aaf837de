"""The Cloud API client against a real local HTTP server (and raw TCP ones for broken answers),
through each transport: every answer of Meta (or of a proxy) reads the same over both."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from wa_consumer.classify import Category, classify
from wa_consumer.errors import GraphApiError, GraphError, GraphTransportError
from wa_consumer.graph import MAX_ERROR_BYTES, GraphClient, SendResult
from wa_consumer.transport import Answer, StubTransport, Transport

from .cloud_fakes import (
    NUMBER,
    PAYLOAD,
    TOKEN,
    TRANSPORTS,
    WAMID,
    FakeCloud,
    answer,
    assert_no_token,
    cloud_server,
    started,
    success_body,
)


def meta_error(
    code: int,
    message: str = "(#131000) Something went wrong",
    *,
    subcode: int | None = None,
    is_transient: bool | None = None,
    details: str | None = None,
) -> dict[str, object]:
    error: dict[str, object] = {
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


@pytest.fixture
async def cloud() -> AsyncIterator[FakeCloud]:
    async with cloud_server() as fake:
        yield fake


@pytest.fixture(params=TRANSPORTS)
async def transport(request: pytest.FixtureRequest) -> AsyncIterator[Transport]:
    async with started(request.param) as opened:
        yield opened


@pytest.fixture
def client(cloud: FakeCloud, transport: Transport) -> GraphClient:
    return GraphClient(transport, cloud.url, "v23.0")


async def send_error(client: GraphClient) -> GraphError:
    with pytest.raises(GraphError) as caught:
        await client.send(NUMBER, TOKEN, PAYLOAD)
    assert_no_token(caught.value)
    return caught.value


# -- success ---------------------------------------------------------------------------------


async def test_accepted_message_returns_its_wamid(client: GraphClient, cloud: FakeCloud) -> None:
    result = await client.send(NUMBER, TOKEN, PAYLOAD)

    assert result == SendResult(WAMID, 200, result.latency_ms, None)
    assert result.latency_ms > 0
    (request, body), *_ = cloud.requests
    assert request.path == f"/v23.0/{NUMBER}/messages"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"] == "wa-consumer"
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
    cloud: FakeCloud, transport: Transport
) -> None:
    client = GraphClient(transport, cloud.url + "/", "v23.0")
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


# -- the seam -------------------------------------------------------------------------------


async def test_a_transport_error_passes_through_unchanged() -> None:
    refused = GraphTransportError("cannot connect", maybe_sent=False, short_code="connect_error")
    stub = StubTransport(lambda url, body: refused)
    with pytest.raises(GraphTransportError) as caught:
        await GraphClient(stub, "https://graph.example", "v23.0").send(NUMBER, TOKEN, PAYLOAD)
    assert caught.value is refused
    assert stub.posts == [(f"https://graph.example/v23.0/{NUMBER}/messages", PAYLOAD)]
    assert stub.with_token == 1


async def test_the_client_reads_metas_answer_whatever_carried_it() -> None:
    stub = StubTransport(Answer(200, b'{"messages": [{"id": "wamid.X"}]}'))
    result = await GraphClient(stub, "https://graph.example", "v23.0").send(NUMBER, TOKEN, b"{}")
    assert (result.wamid, result.status) == ("wamid.X", 200)


def test_client_repr_shows_no_token(client: GraphClient) -> None:
    assert "GraphClient(" in repr(client)
    assert TOKEN not in repr(client)
