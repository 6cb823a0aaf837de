"""Each Cloud API transport on the wire, against local servers: what was not sent and what may
have been (SPEC §5), the timeouts, connections reused and bounded, no cookies and no proxies
from the environment, extra CAs trusted, and no error that holds the token."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from wa_consumer.errors import GraphError, GraphTransportError, SettingsError
from wa_consumer.graph import GraphClient
from wa_consumer.settings import Settings, load_settings
from wa_consumer.transport import build_transport
from wa_consumer.transport.aiohttp import AiohttpTransport, make_session
from wa_consumer.transport.pyreqwest import PyreqwestTransport

from .cloud_fakes import (
    NUMBER,
    PAYLOAD,
    TOKEN,
    TRANSPORTS,
    FakeCloud,
    LocalCA,
    assert_no_token,
    closed_port,
    cloud_server,
    h2_server,
    json_response,
    make_local_ca,
    make_transport,
    raw_server,
    started,
    success_body,
    unanswered_connects,
)


@pytest.fixture(params=TRANSPORTS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def cloud() -> AsyncIterator[FakeCloud]:
    async with cloud_server() as fake:
        yield fake


@pytest.fixture(scope="session")
def local_ca(tmp_path_factory: pytest.TempPathFactory) -> LocalCA:
    made = make_local_ca(tmp_path_factory.mktemp("ca"))
    if made is None:
        pytest.skip("needs the openssl command")
    return made


async def send_error(kind: str, url: str, **options: float) -> GraphError:
    async with started(kind, **options) as transport:  # type: ignore[arg-type]
        with pytest.raises(GraphError) as caught:
            await GraphClient(transport, url, "v23.0").send(NUMBER, TOKEN, PAYLOAD)
    assert_no_token(caught.value)
    return caught.value


async def hang_until_released(cloud: FakeCloud) -> None:
    async def hang(request: web.Request) -> web.StreamResponse:
        await cloud.release.wait()
        return web.Response(status=200)

    cloud.respond = hang


# -- not sent: safe to send again ------------------------------------------------------------


async def test_connection_refused_was_not_sent(kind: str) -> None:
    err = await send_error(kind, f"http://127.0.0.1:{closed_port()}")
    assert isinstance(err, GraphTransportError)
    assert not err.maybe_sent
    assert err.short_code == err.code_text == "connect_error"
    assert (err.status, err.code) == (None, None)
    assert "connect" in err.message.lower()  # what the client said, without the URL


async def test_unknown_host_was_not_sent(kind: str) -> None:
    err = await send_error(kind, "http://no-such-host.invalid")
    assert isinstance(err, GraphTransportError)
    assert not err.maybe_sent
    assert err.short_code in ("connect_error", "connect_timeout")  # a slow resolver times out


async def test_a_connect_that_never_completes_times_out_as_not_sent(kind: str) -> None:
    with unanswered_connects() as url:
        began = time.perf_counter()
        err = await send_error(kind, url, timeout=1.0)  # connect timeout: half of it
        took = time.perf_counter() - began
    assert isinstance(err, GraphTransportError)
    assert (err.maybe_sent, err.short_code) == (False, "connect_timeout")
    assert 0.4 < took < 0.95, took


async def test_waiting_too_long_for_a_free_connection_was_not_sent(
    kind: str, cloud: FakeCloud
) -> None:
    await hang_until_released(cloud)
    async with started(kind, limit=1, timeout=1.0) as transport:
        client = GraphClient(transport, cloud.url, "v23.0")
        first = asyncio.create_task(client.send(NUMBER, TOKEN, PAYLOAD))
        await asyncio.wait_for(cloud.arrived.wait(), 5)  # the pool's one connection is taken
        with pytest.raises(GraphTransportError) as waited:
            await client.send(NUMBER, TOKEN, PAYLOAD)
        with pytest.raises(GraphTransportError) as hung:
            await first
    assert (waited.value.maybe_sent, waited.value.short_code) == (False, "connect_timeout")
    assert (hung.value.maybe_sent, hung.value.short_code) == (True, "timeout")
    assert len(cloud.requests) == 1  # the second never went out
    assert_no_token(waited.value)


async def test_a_certificate_from_an_unknown_ca_was_not_sent(kind: str, local_ca: LocalCA) -> None:
    async with cloud_server(local_ca.server_context()) as cloud:
        err = await send_error(kind, cloud.url)
    assert isinstance(err, GraphTransportError)
    assert (err.maybe_sent, err.short_code) == (False, "connect_error")
    assert not cloud.requests


# -- may have been sent: ambiguous -----------------------------------------------------------


async def test_answer_that_never_comes_may_have_been_sent(kind: str, cloud: FakeCloud) -> None:
    await hang_until_released(cloud)
    began = time.perf_counter()
    err = await send_error(kind, cloud.url, timeout=0.3)
    took = time.perf_counter() - began

    assert isinstance(err, GraphTransportError)
    assert err.maybe_sent
    assert err.short_code == err.code_text == "timeout"
    assert len(cloud.requests) == 1  # the request did arrive
    assert 0.25 < took < 1.5, took  # the total timeout bounds it


async def test_an_answer_stalled_mid_body_may_have_been_sent(kind: str) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 90\r\n\r\n{"
    async with raw_server(head, then_hang=True) as url:
        err = await send_error(kind, url, timeout=0.5)
    assert isinstance(err, GraphTransportError)
    assert (err.maybe_sent, err.short_code) == (True, "timeout")


@pytest.mark.parametrize(
    "reply",
    [b"", b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 90\r\n\r\n{"mes'],
    ids=["hang-up-before-answering", "hang-up-mid-body"],
)
async def test_connection_dropped_after_sending_may_have_been_sent(kind: str, reply: bytes) -> None:
    async with raw_server(reply) as url:
        err = await send_error(kind, url)
    assert isinstance(err, GraphTransportError)
    assert (err.maybe_sent, err.short_code) == (True, "disconnected")


async def test_garbage_answer_is_not_chained_to_the_clients_error(kind: str) -> None:
    # aiohttp's ClientResponseError repr shows the request headers, token included; the
    # causes of pyreqwest's quote the URL.
    async with raw_server(b"garbage\r\n\r\n") as url:
        err = await send_error(kind, url)
    assert isinstance(err, GraphTransportError)
    assert (err.maybe_sent, err.short_code) == (True, "bad_response")
    assert err.__cause__ is None
    assert err.__context__ is None


async def test_a_cancelled_send_goes_on_until_answered_or_timed_out_on_pyreqwest(
    kind: str, cloud: FakeCloud
) -> None:
    """aiohttp drops the connection of a cancelled send at once; pyreqwest cannot abort a
    request already out, so it holds its connection until its answer (or total timeout)."""
    hang = asyncio.Event()

    async def first_hangs(request: web.Request) -> web.StreamResponse:
        if len(cloud.requests) == 1:
            await hang.wait()
        return json_response(200, success_body())

    cloud.respond = first_hangs
    async with started(kind, limit=1, timeout=1.0) as transport:
        client = GraphClient(transport, cloud.url, "v23.0")
        stuck = asyncio.create_task(client.send(NUMBER, TOKEN, PAYLOAD))
        await asyncio.wait_for(cloud.arrived.wait(), 5)
        stuck.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stuck
        if kind == "aiohttp":
            assert (await client.send(NUMBER, TOKEN, PAYLOAD)).status == 200
        else:
            with pytest.raises(GraphTransportError) as waited:
                await client.send(NUMBER, TOKEN, PAYLOAD)
            assert (waited.value.maybe_sent, waited.value.short_code) == (False, "connect_timeout")
            hang.set()  # answered: the connection is free again
            assert (await client.send(NUMBER, TOKEN, PAYLOAD)).status == 200
    hang.set()
    assert len(cloud.requests) == 2


async def test_the_total_timeout_counts_the_wait_for_a_free_connection(
    kind: str, cloud: FakeCloud
) -> None:
    async def slow_then_hang(request: web.Request) -> web.StreamResponse:
        if len(cloud.requests) == 1:
            await asyncio.sleep(0.3)
            return json_response(200, success_body())
        await cloud.release.wait()
        return json_response(200, success_body())

    cloud.respond = slow_then_hang
    async with started(kind, limit=1, timeout=1.0) as transport:
        client = GraphClient(transport, cloud.url, "v23.0")
        first = asyncio.create_task(client.send(NUMBER, TOKEN, PAYLOAD))
        await asyncio.wait_for(cloud.arrived.wait(), 5)
        began = time.perf_counter()
        with pytest.raises(GraphTransportError) as caught:
            await client.send(NUMBER, TOKEN, PAYLOAD)  # waits 0.3 s for the connection
        took = time.perf_counter() - began
        await first
    assert (caught.value.maybe_sent, caught.value.short_code) == (True, "timeout")
    assert 0.9 < took < 1.2, took  # 1.0 in all, not 0.3 + 1.0


# -- HTTP/2 (pyreqwest, WA_GRAPH_HTTP2): what the server says it did not process -------------


@pytest.mark.parametrize(
    ("mode", "maybe_sent", "short"),
    [
        ("refuse", False, "unprocessed"),  # RST_STREAM REFUSED_STREAM
        ("goaway", False, "unprocessed"),  # GOAWAY (no error) below the stream's id
        ("reset", True, "disconnected"),  # RST_STREAM INTERNAL_ERROR: maybe processed
        ("goaway-covered", True, "disconnected"),  # GOAWAY (no error) covering the stream,
        # then the connection closed before its answer
        ("goaway-error", True, "disconnected"),  # GOAWAY with an error, the stream covered
    ],
)
async def test_over_http2_only_a_refused_stream_or_one_past_a_goaway_was_not_sent(
    mode: str, maybe_sent: bool, short: str, tmp_path: Path
) -> None:
    async with (
        h2_server(mode, tmp_path) as (url, ca_file, seen),
        started("pyreqwest", ca_file=ca_file, http2=True) as transport,
    ):
        with pytest.raises(GraphTransportError) as caught:
            await GraphClient(transport, url, "v23.0").send(NUMBER, TOKEN, PAYLOAD)
    assert (caught.value.maybe_sent, caught.value.short_code) == (maybe_sent, short)
    assert seen  # each time the request was out on the wire
    assert_no_token(caught.value)


# -- connections -----------------------------------------------------------------------------


async def test_sends_one_after_another_reuse_one_connection(kind: str, cloud: FakeCloud) -> None:
    async with started(kind) as transport:
        client = GraphClient(transport, cloud.url, "v23.0")
        for _ in range(20):
            await client.send(NUMBER, TOKEN, PAYLOAD)
    assert len(cloud.requests) == 20
    assert len(cloud.peers) == 1


async def test_at_most_limit_connections_and_requests_at_once(kind: str, cloud: FakeCloud) -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.02)
        return json_response(200, success_body())

    cloud.respond = slow
    async with started(kind, limit=4) as transport:
        client = GraphClient(transport, cloud.url, "v23.0")
        for _ in range(2):
            results = await asyncio.gather(
                *(client.send(NUMBER, TOKEN, PAYLOAD) for _ in range(40))
            )
            assert len(results) == 40
    assert cloud.peak == 4
    assert len(cloud.peers) <= 4  # and kept for the second burst


async def test_a_cookie_set_by_an_answer_is_never_sent_back(kind: str, cloud: FakeCloud) -> None:
    async def with_cookie(request: web.Request) -> web.StreamResponse:
        response = json_response(200, success_body())
        response.set_cookie("session", "abc")
        return response

    cloud.respond = with_cookie
    async with started(kind) as transport:
        client = GraphClient(transport, cloud.url, "v23.0")
        await client.send(NUMBER, TOKEN, PAYLOAD)
        await client.send(NUMBER, TOKEN, PAYLOAD)
    assert [request.headers.get("Cookie") for request, _ in cloud.requests] == [None, None]


async def test_proxies_from_the_environment_are_not_used(
    kind: str, cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    nowhere = f"http://127.0.0.1:{closed_port()}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(name, nowhere)
        monkeypatch.setenv(name.lower(), nowhere)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    async with started(kind) as transport:
        await GraphClient(transport, cloud.url, "v23.0").send(NUMBER, TOKEN, PAYLOAD)
    assert len(cloud.requests) == 1


async def test_a_ca_file_is_trusted_beside_the_systems(kind: str, local_ca: LocalCA) -> None:
    async with (
        cloud_server(local_ca.server_context()) as cloud,
        started(kind, ca_file=local_ca.ca_file) as transport,
    ):
        assert cloud.url.startswith("https://")
        result = await GraphClient(transport, cloud.url, "v23.0").send(NUMBER, TOKEN, PAYLOAD)
    assert result.status == 200


# -- building and lifecycle ------------------------------------------------------------------


def test_the_setting_chooses_the_transport_sized_to_the_prefetch() -> None:
    pyreqwest = build_transport(Settings(_env_file=None, graph_transport="pyreqwest", prefetch=7))
    assert isinstance(pyreqwest, PyreqwestTransport)
    assert repr(pyreqwest) == "PyreqwestTransport(limit=7, timeout=20.0)"
    aiohttp_ = build_transport(Settings(_env_file=None, graph_transport="aiohttp", prefetch=7))
    assert isinstance(aiohttp_, AiohttpTransport)


def test_http2_is_off_by_default_and_needs_pyreqwest() -> None:
    on = build_transport(Settings(_env_file=None, graph_http2=True, prefetch=7))
    assert repr(on) == "PyreqwestTransport(limit=7, timeout=20.0, http2=True)"
    with pytest.raises(SettingsError, match=r"^WA_GRAPH_HTTP2: .*needs WA_GRAPH_TRANSPORT=pyreq"):
        load_settings(_env_file=None, graph_transport="aiohttp", graph_http2=True)
    assert not load_settings(_env_file=None).graph_http2


def test_a_ca_file_that_cannot_be_read_or_holds_no_certificate_stops_start_up(
    tmp_path: Path,
) -> None:
    with pytest.raises(SettingsError, match=r"^WA_GRAPH_CA_FILE: .*cannot read it"):
        load_settings(_env_file=None, graph_ca_file=str(tmp_path / "missing.pem"))
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(SettingsError, match=r"^WA_GRAPH_CA_FILE: .*holds no PEM certificate"):
        load_settings(_env_file=None, graph_ca_file=str(junk))
    assert load_settings(_env_file=None, graph_ca_file="").graph_ca_file is None


async def test_a_post_before_start_is_a_bug_said_plainly(kind: str) -> None:
    with pytest.raises(RuntimeError, match=r"start\(\) was not called"):
        await make_transport(kind).post("http://127.0.0.1:1/", b"{}", TOKEN)


async def test_the_aiohttp_session_is_sized_to_the_prefetch_with_explicit_timeouts() -> None:
    session = make_session(limit=7, timeout=3.0)
    try:
        connector = session.connector
        assert isinstance(connector, aiohttp.TCPConnector)
        assert (connector.limit, connector.limit_per_host) == (7, 7)
        assert isinstance(session.cookie_jar, aiohttp.DummyCookieJar)
        timeout = session.timeout
        assert (timeout.total, timeout.sock_read) == (3.0, None)  # the total bounds the answer
        assert timeout.connect == 1.5  # half the total (at most 10 s)
        assert not session.trust_env
    finally:
        await session.close()


EXIT_AFTER_A_FAILED_SEND = """
import sys
import uvloop
from wa_consumer.errors import GraphTransportError
from wa_consumer.transport.pyreqwest import PyreqwestTransport

async def main() -> None:
    transport = PyreqwestTransport(limit=2, timeout=2.0)
    await transport.start()
    try:
        await transport.post(sys.argv[1], b"{}", "token")
    except GraphTransportError:
        pass
    await transport.close()

uvloop.run(main())  # the daemon's loop (cli/common.py)
"""


async def test_a_process_exits_cleanly_right_after_a_failed_pyreqwest_send() -> None:
    """pyreqwest's tokio thread calls into Python to wake the loop; on the stdlib loop it lets
    go of the GIL meanwhile, and an exit right then aborted the process now and then. On
    uvloop, as the daemon runs, it never did (transport/pyreqwest.py, ``_SETTLE_SECONDS``)."""
    url = f"http://127.0.0.1:{closed_port()}/"
    gate = asyncio.Semaphore(8)

    async def one() -> int:
        async with gate:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-c", EXIT_AFTER_A_FAILED_SEND, url
            )
            return await asyncio.wait_for(process.wait(), 60)

    codes = await asyncio.gather(*(one() for _ in range(24)))
    assert codes == [0] * 24
