"""The sandbox's TLS port speaks HTTP/2 to clients that offer it by ALPN, as Meta does, and
HTTP/1.1 to the others; the same application and state answer both (sandbox/http2.py)."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from pyreqwest.client import ClientBuilder

from wa_consumer.errors import GraphTransportError
from wa_consumer.graph import GraphClient
from wa_consumer.sandbox import FailureRule, RunningSandbox, start_sandbox
from wa_consumer.transport.pyreqwest import PyreqwestTransport

ACME_NUMBER = "106540352242922"


@pytest.fixture
async def tls_sandbox() -> AsyncIterator[RunningSandbox]:
    async with await start_sandbox(tls=True) as running:
        yield running


def payload(to: str) -> bytes:
    body = {"messaging_product": "whatsapp", "to": to, "type": "text", "text": {"body": "hi"}}
    return orjson.dumps(body)


def ca_of(sandbox: RunningSandbox) -> Path:
    assert sandbox.ca_file is not None
    return sandbox.ca_file


async def transport_for(
    sandbox: RunningSandbox, *, http2: bool = True, limit: int = 500, timeout: float = 5.0
) -> PyreqwestTransport:
    transport = PyreqwestTransport(
        limit=limit, timeout=timeout, ca_file=ca_of(sandbox), http2=http2
    )
    await transport.start()
    return transport


def alpn(sandbox: RunningSandbox, offered: list[str]) -> str | None:
    """What the TLS port chooses of ``offered`` (a handshake alone, in a thread)."""
    context = ssl.create_default_context(cafile=str(ca_of(sandbox)))
    context.set_alpn_protocols(offered)
    host, port = sandbox.url.removeprefix("https://").rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        return tls.selected_alpn_protocol()


async def test_a_client_offering_h2_gets_http2_and_one_offering_http1_gets_http1(
    tls_sandbox: RunningSandbox,
) -> None:
    assert await asyncio.to_thread(alpn, tls_sandbox, ["h2", "http/1.1"]) == "h2"
    assert await asyncio.to_thread(alpn, tls_sandbox, ["http/1.1"]) == "http/1.1"
    assert tls_sandbox.connections.stats()["h2_opened"] == 1  # of these two handshakes
    client = ClientBuilder().add_root_certificate_pem(ca_of(tls_sandbox).read_bytes())
    async with client.http2(True).timeout(timedelta(seconds=5)).build() as h2:
        response = await h2.get(f"{tls_sandbox.url}/_sandbox/stats").build().send()
        assert response.version == "HTTP/2.0"
        stats = json.loads(bytes(await response.bytes()))
    assert stats["connections"]["h2_opened"] == 2


async def test_many_concurrent_sends_over_http2_share_one_connection(
    tls_sandbox: RunningSandbox,
) -> None:
    token = tls_sandbox.state.token("acme")
    tls_sandbox.state.configure(latency={"ms": 20})
    transport = await transport_for(tls_sandbox)
    try:
        client = GraphClient(transport, tls_sandbox.url, "v23.0")
        await client.send(ACME_NUMBER, token, payload("27820000000"))  # the connection is up
        before = tls_sandbox.connections.stats()
        results = await asyncio.gather(
            *(client.send(ACME_NUMBER, token, payload(f"2782{i:07d}")) for i in range(300))
        )
    finally:
        await transport.close()
    assert len({r.wamid for r in results}) == 300
    after = tls_sandbox.connections.stats()
    assert after["opened"] == before["opened"] == after["h2_opened"] == 1
    assert sum(r["outcome"] == "sent" for r in tls_sandbox.state.requests()) == 301


async def test_http2_is_off_unless_asked_and_then_the_same_port_speaks_http1(
    tls_sandbox: RunningSandbox,
) -> None:
    token = tls_sandbox.state.token("acme")
    transport = await transport_for(tls_sandbox, http2=False)
    try:
        client = GraphClient(transport, tls_sandbox.url, "v23.0")
        for i in range(3):
            await client.send(ACME_NUMBER, token, payload(f"2782000000{i}"))
    finally:
        await transport.close()
    stats = tls_sandbox.connections.stats()
    assert (stats["tls_opened"], stats["h2_opened"]) == (1, 0)  # reused, and HTTP/1.1


async def test_both_protocols_answer_from_one_state(tls_sandbox: RunningSandbox) -> None:
    token = tls_sandbox.state.token("acme")
    for http2 in (True, False):
        transport = await transport_for(tls_sandbox, http2=http2)
        try:
            await GraphClient(transport, tls_sandbox.url, "v23.0").send(
                ACME_NUMBER, token, payload("27821234567")
            )
        finally:
            await transport.close()
    url = f"{tls_sandbox.url}/_sandbox/requests?since=not-a-number"  # a handler's HTTPException
    context = ssl.create_default_context(cafile=str(ca_of(tls_sandbox)))

    def fetch(path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(path, context=context, timeout=5) as response:
                return int(response.status), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    assert (await asyncio.to_thread(fetch, url))[0] == 400
    logged = tls_sandbox.state.requests()
    assert [r["outcome"] for r in logged] == ["sent", "sent"]
    assert len({r["wamid"] for r in logged}) == 2  # one wamid sequence for both protocols
    client = ClientBuilder().add_root_certificate_pem(ca_of(tls_sandbox).read_bytes())
    async with client.http2(True).timeout(timedelta(seconds=5)).build() as h2:
        response = await h2.get(url).build().send()
        assert (response.status, response.version) == (400, "HTTP/2.0")


async def test_a_hang_over_http2_resets_its_own_stream_and_the_others_go_on() -> None:
    rule = FailureRule(match=r"^1555007", hang=True)
    async with await start_sandbox(tls=True) as sandbox:
        sandbox.state.configure(hang_seconds=0.3, rules=[rule])
        token = sandbox.state.token("acme")
        transport = await transport_for(sandbox)
        try:
            client = GraphClient(transport, sandbox.url, "v23.0")
            await client.send(ACME_NUMBER, token, payload("27820000000"))  # the connection is up
            hung = asyncio.create_task(client.send(ACME_NUMBER, token, payload("15550070001")))
            others = [client.send(ACME_NUMBER, token, payload(f"2782{i:07d}")) for i in range(20)]
            assert len(await asyncio.gather(*others)) == 20
            with pytest.raises(GraphTransportError) as caught:
                await hung
            await client.send(ACME_NUMBER, token, payload("27829999999"))  # still one connection
        finally:
            await transport.close()
        assert sandbox.connections.stats()["h2_opened"] == 1
    # The stream reset after the request was read: it may have been processed.
    assert (caught.value.maybe_sent, caught.value.short_code) == (True, "disconnected")


async def test_an_answer_that_never_comes_over_http2_times_out_as_maybe_sent(
    tls_sandbox: RunningSandbox,
) -> None:
    tls_sandbox.state.configure(rules=[FailureRule(match=r"^1555007", hang=True)])
    transport = await transport_for(tls_sandbox, timeout=0.5)
    began = time.perf_counter()
    try:
        with pytest.raises(GraphTransportError) as caught:
            await GraphClient(transport, tls_sandbox.url, "v23.0").send(
                ACME_NUMBER, tls_sandbox.state.token("acme"), payload("15550070001")
            )
    finally:
        await transport.close()
    assert (caught.value.maybe_sent, caught.value.short_code) == (True, "timeout")
    assert time.perf_counter() - began < 2.0


async def test_the_stream_limit_bounds_sends_at_once_and_no_second_connection_opens() -> None:
    async with await start_sandbox(tls=True, http2_max_streams=4) as sandbox:
        sandbox.state.configure(latency={"ms": 50})
        token = sandbox.state.token("acme")
        transport = await transport_for(sandbox)
        try:
            client = GraphClient(transport, sandbox.url, "v23.0")
            await client.send(ACME_NUMBER, token, payload("27820000000"))
            began = time.perf_counter()
            await asyncio.gather(
                *(client.send(ACME_NUMBER, token, payload(f"2782{i:07d}")) for i in range(40))
            )
            took = time.perf_counter() - began
        finally:
            await transport.close()
        assert sandbox.connections.stats()["h2_opened"] == 1
    assert took > 0.45, took  # 40 sends, 4 at a time, 50 ms each: at least 10 rounds


async def test_the_pool_bound_holds_over_http2(tls_sandbox: RunningSandbox) -> None:
    """``limit`` bounds the sends in flight on the one connection: the next waits, and past
    the connect timeout gives up as not sent."""
    tls_sandbox.state.configure(rules=[FailureRule(match=r"^1555007", hang=True)])
    token = tls_sandbox.state.token("acme")
    transport = await transport_for(tls_sandbox, limit=1, timeout=1.0)
    try:
        client = GraphClient(transport, tls_sandbox.url, "v23.0")
        hung = asyncio.create_task(client.send(ACME_NUMBER, token, payload("15550070001")))
        await asyncio.sleep(0.1)
        with pytest.raises(GraphTransportError) as waited:
            await client.send(ACME_NUMBER, token, payload("27821234567"))
        with pytest.raises(GraphTransportError):
            await hung
    finally:
        await transport.close()
    assert (waited.value.maybe_sent, waited.value.short_code) == (False, "connect_timeout")
    assert [r["outcome"] for r in tls_sandbox.state.requests()] == ["hang"]


async def test_without_http2_the_tls_port_offers_http1_only() -> None:
    async with await start_sandbox(tls=True, http2=False) as sandbox:
        assert await asyncio.to_thread(alpn, sandbox, ["h2", "http/1.1"]) == "http/1.1"
        assert sandbox.http2 is None


async def test_close_ends_open_http2_connections_and_hanging_streams() -> None:
    sandbox = await start_sandbox(tls=True)
    sandbox.state.configure(rules=[FailureRule(match=r"^1555007", hang=True)])
    transport = await transport_for(sandbox, timeout=10.0)
    try:
        client = GraphClient(transport, sandbox.url, "v23.0")
        hung = asyncio.create_task(
            client.send(ACME_NUMBER, sandbox.state.token("acme"), payload("15550070001"))
        )
        await asyncio.sleep(0.2)
        began = time.perf_counter()
        await sandbox.close()
        assert time.perf_counter() - began < 3.0
        with pytest.raises(GraphTransportError) as caught:
            await hung
    finally:
        await transport.close()
    assert caught.value.maybe_sent
    assert sandbox.connections.stats()["open"] == 0
