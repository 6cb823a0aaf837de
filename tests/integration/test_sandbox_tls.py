"""The sandbox over TLS, as Meta serves the Cloud API: the daemon sends through it with each
transport when it trusts the sandbox's CA (``WA_GRAPH_CA_FILE``), over HTTP/2 when asked
(``WA_GRAPH_HTTP2``), and sends nothing without it (the handshake fails before the request is
written: not sent, no ambiguity)."""

from __future__ import annotations

import asyncio
import ssl
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from wa_consumer.sandbox import RunningSandbox, start_sandbox

from .harness import broker_for, make_settings, running, text_message, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(params=["aiohttp", "pyreqwest"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def tls_sandbox() -> AsyncIterator[RunningSandbox]:
    """The sandbox over HTTPS with a CA made at start (and plain HTTP for the tenant service)."""
    running_sandbox = await start_sandbox(port=0, tls=True)
    try:
        yield running_sandbox
    finally:
        await running_sandbox.close()


def sent(sandbox: RunningSandbox, to: str) -> list[dict[str, Any]]:
    return [
        r
        for r in sandbox.state.requests()
        if (r["body"] or {}).get("to") == to and r["outcome"] == "sent"
    ]


async def test_tls_sandbox_makes_a_ca_and_a_server_certificate_it_signed(
    tls_sandbox: RunningSandbox,
) -> None:
    assert tls_sandbox.url.startswith("https://127.0.0.1:")
    assert tls_sandbox.plain_url.startswith("http://127.0.0.1:")
    ca_file = tls_sandbox.ca_file
    assert ca_file is not None and ca_file.is_file()
    assert tls_sandbox.tls is not None and tls_sandbox.tls.cert_file != ca_file  # not its own CA
    url = f"{tls_sandbox.url}/_sandbox/stats"

    def fetch(context: ssl.SSLContext | None) -> int:  # in a thread: the sandbox is in this loop
        with urllib.request.urlopen(url, context=context, timeout=5) as response:
            return int(response.status)

    context = ssl.create_default_context(cafile=str(ca_file))
    assert await asyncio.to_thread(fetch, context) == 200
    with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
        await asyncio.to_thread(fetch, None)


async def test_tls_dir_keeps_the_files_and_close_removes_a_temporary_one(tmp_path: Path) -> None:
    kept = await start_sandbox(port=0, tls=True, tls_dir=tmp_path / "tls")
    await kept.close()
    assert kept.ca_file == tmp_path / "tls" / "sandbox-ca.pem" and kept.ca_file.is_file()
    temporary = await start_sandbox(port=0, tls=True)
    assert temporary.ca_file is not None
    await temporary.close()
    assert not temporary.ca_file.parent.exists()


async def test_the_daemon_sends_through_the_tls_sandbox_trusting_its_ca(
    vhost: str, tls_sandbox: RunningSandbox, transport: str
) -> None:
    settings = make_settings(
        vhost,
        tls_sandbox.url,
        tenant_service_url=tls_sandbox.plain_url,
        graph_transport=transport,
        graph_ca_file=str(tls_sandbox.ca_file),
    )
    opened = tls_sandbox.connections.tls_opened
    async with running(settings), broker_for(settings) as broker:
        for i in range(5):
            await broker.publish(text_message("acme", f"2782555000{i}"))
        await wait_for(lambda: _all_sent(tls_sandbox, 5))
    assert tls_sandbox.connections.tls_opened > opened  # the sends came over TLS connections


async def test_with_http2_the_daemon_sends_over_one_http2_connection(
    vhost: str, tls_sandbox: RunningSandbox
) -> None:
    settings = make_settings(
        vhost,
        tls_sandbox.url,
        tenant_service_url=tls_sandbox.plain_url,
        graph_http2=True,
        graph_ca_file=str(tls_sandbox.ca_file),
    )
    async with running(settings), broker_for(settings) as broker:
        await broker.publish(text_message("acme", "27825550000"))
        await wait_for(lambda: _all_sent(tls_sandbox, 1))
        opened = tls_sandbox.connections.stats()
        for i in range(1, 40):
            await broker.publish(text_message("acme", f"278255500{i:02d}"))
        await wait_for(lambda: _all_sent(tls_sandbox, 40))
    assert opened["h2_opened"] >= 1
    assert tls_sandbox.connections.stats()["h2_opened"] == opened["h2_opened"]  # reused


async def _all_sent(sandbox: RunningSandbox, n: int) -> bool:
    return sum(r["outcome"] == "sent" for r in sandbox.state.requests()) >= n


async def test_without_the_ca_nothing_is_sent_and_the_failure_is_not_ambiguous(
    vhost: str, tls_sandbox: RunningSandbox, transport: str
) -> None:
    settings = make_settings(
        vhost, tls_sandbox.url, tenant_service_url=tls_sandbox.plain_url, graph_transport=transport
    )
    async with running(settings), broker_for(settings) as broker:
        await broker.publish(text_message("acme", "27825550100"))
        [dead] = await broker.dead(1)
    assert dead.headers["x-error-code"] == "connect_error"
    assert dead.headers["x-error-category"] != "ambiguous"
    assert not [r for r in tls_sandbox.state.requests() if r["path"].endswith("/messages")]
