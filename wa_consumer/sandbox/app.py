"""Building, starting and running the sandbox application.

``create_app`` for embedding (aiohttp's test client), ``start_sandbox`` for a live server in
the current loop (tests, the demo), ``run_sandbox`` for the command line (uvloop, blocking,
stops on SIGINT/SIGTERM). The access log is off: one line per request would be the
bottleneck of any benchmark run against the sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web

from wa_consumer.gctuning import tune_for_serving
from wa_consumer.sandbox.admin import Admin
from wa_consumer.sandbox.cloud import CloudApi
from wa_consumer.sandbox.config import SandboxConfig
from wa_consumer.sandbox.connections import CONNECTIONS_KEY, ConnectionCount
from wa_consumer.sandbox.http2 import DEFAULT_MAX_STREAMS, Http2Server, Http2Site
from wa_consumer.sandbox.state import SandboxState
from wa_consumer.sandbox.tenants import TenantService
from wa_consumer.sandbox.tls import SandboxTls, make_tls
from wa_consumer.sandbox.webhooks import WebhookSender

DEFAULT_PORT = 8089
STATE_KEY = web.AppKey("sandbox_state", SandboxState)
WEBHOOKS_KEY = web.AppKey("sandbox_webhooks", WebhookSender)


def create_app(config: SandboxConfig | None = None) -> web.Application:
    """The sandbox as an aiohttp application; its state is ``app[STATE_KEY]``."""
    state = SandboxState(config)
    webhooks = WebhookSender(state)
    cloud = CloudApi(state, webhooks)
    app = web.Application()
    app[STATE_KEY] = state
    app[WEBHOOKS_KEY] = webhooks
    app[CONNECTIONS_KEY] = ConnectionCount()  # counted once served (start_sandbox)
    # The status webhook sender starts with the server and stops after it.
    app.cleanup_ctx.append(webhooks.run_with)
    app.add_routes(Admin(state, webhooks).routes())
    app.router.add_get(
        "/tenants/{tenant_id}/whatsapp-credentials", TenantService(state).credentials
    )
    app.router.add_post("/{version}/{phone_number_id}/messages", cloud.messages)

    async def end_hangs(_: web.Application) -> None:
        # Hanging requests would otherwise hold shutdown for its whole timeout.
        cloud.wake.set()

    app.on_shutdown.append(end_hangs)
    return app


class RunningSandbox:
    """A sandbox serving in the current event loop; ``state`` changes it in process.

    Over TLS, ``url`` is ``https://`` and ``tls.ca_file`` is the CA a client must trust
    (``WA_GRAPH_CA_FILE``); ``plain_url`` serves the same application over plain HTTP, for
    the tenant service and the admin endpoints (the daemon trusts the CA for the Cloud API
    only). Without TLS ``plain_url`` is ``url``. ``connections`` counts the connections
    clients opened, on both. Over TLS, a client offering ``h2`` by ALPN gets HTTP/2 unless
    the sandbox was started without it.
    """

    def __init__(
        self,
        runner: web.AppRunner,
        url: str,
        state: SandboxState,
        webhooks: WebhookSender,
        *,
        connections: ConnectionCount | None = None,
        tls: SandboxTls | None = None,
        tls_temp: Path | None = None,
        plain_url: str | None = None,
        http2: Http2Server | None = None,
    ) -> None:
        self._runner = runner
        self.url = url
        self.plain_url = plain_url or url
        self.state = state
        self.webhooks = webhooks
        self.connections = connections or ConnectionCount()
        self.tls = tls
        self.http2 = http2
        self._tls_temp = tls_temp

    @property
    def ca_file(self) -> Path | None:
        """The CA to trust over TLS (None: plain HTTP)."""
        return None if self.tls is None else self.tls.ca_file

    async def close(self) -> None:
        """Stop serving; hanging requests are dropped; a temporary TLS directory removed."""
        try:
            await self._runner.cleanup()
        finally:
            if self._tls_temp is not None:
                shutil.rmtree(self._tls_temp, ignore_errors=True)

    async def __aenter__(self) -> RunningSandbox:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def start_sandbox(
    host: str = "127.0.0.1",
    port: int = 0,
    config: SandboxConfig | None = None,
    *,
    tls: bool = False,
    tls_dir: Path | None = None,
    plain_port: int = 0,
    http2: bool = True,
    http2_max_streams: int = DEFAULT_MAX_STREAMS,
) -> RunningSandbox:
    """Serve the sandbox on ``host:port`` (0: a free port) until ``close()``.

    ``tls``: HTTPS with a CA and a server certificate made now (``wa_consumer.sandbox.tls``),
    written to ``tls_dir`` (kept) or to a temporary directory (removed by ``close()``); the
    same application also on plain HTTP at ``plain_port`` (0: a free port). Over TLS, HTTP/2
    to clients that offer it (``http2``), at most ``http2_max_streams`` streams at once on
    each connection.
    """
    made: SandboxTls | None = None
    temp: Path | None = None
    if tls:
        if tls_dir is None:
            temp = tls_dir = Path(tempfile.mkdtemp(prefix="wa-sandbox-tls-"))
        made = make_tls(tls_dir)
    app = create_app(config)
    connections = app[CONNECTIONS_KEY]
    h2 = Http2Server(connections, http2_max_streams) if made is not None and http2 else None
    if h2 is not None:
        app.on_shutdown.append(h2.shutdown)  # after the hangs are woken (create_app)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
    try:
        await runner.setup()
        assert runner.server is not None  # set by setup()
        connections.attach(runner.server)
        site: web.BaseSite
        if made is None:
            site = web.TCPSite(runner, host, port, backlog=1024)
        elif h2 is not None:
            context = made.server_context(http2=True)
            site = Http2Site(runner, host, port, backlog=1024, ssl_context=context, http2=h2)
        else:
            context = made.server_context(http2=False)
            site = web.TCPSite(runner, host, port, backlog=1024, ssl_context=context)
        await site.start()
        if made is not None:
            await web.TCPSite(runner, host, plain_port, backlog=1024).start()
    except BaseException:
        await runner.cleanup()
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
        raise
    # The sites' sockets in order: the first is the main site's, the last the plain one's.
    addresses = runner.addresses
    urls = [_url(address, made is not None and i == 0) for i, address in enumerate(addresses)]
    return RunningSandbox(
        runner,
        urls[0],
        app[STATE_KEY],
        app[WEBHOOKS_KEY],
        connections=connections,
        tls=made,
        tls_temp=temp,
        plain_url=urls[-1],
        http2=h2,
    )


def _url(address: Any, tls: bool) -> str:
    bound_host, bound_port = address[:2]
    display = f"[{bound_host}]" if ":" in bound_host else bound_host
    return f"{'https' if tls else 'http'}://{display}:{bound_port}"


def describe(sandbox: RunningSandbox) -> str:
    """The start-up banner: where it listens, the tenants and the recipient rules."""
    lines = [
        f"WhatsApp sandbox listening on {sandbox.url}",
        f"  WA_GRAPH_API_URL={sandbox.url}  WA_TENANT_SERVICE_URL={sandbox.plain_url}",
    ]
    if sandbox.ca_file is not None:
        lines.append(f"  WA_GRAPH_CA_FILE={sandbox.ca_file}")
        if sandbox.http2 is not None:
            streams = sandbox.http2.max_streams
            lines.append(f"  (HTTP/2 to clients offering h2, {streams} streams per connection)")
        lines.append(f"  (also plain HTTP on {sandbox.plain_url}: tenant service, admin)")
    lines.append("tenants:")
    for tenant in sandbox.state.config.tenants:
        flag = "  (suspended)" if tenant.suspended else ""
        numbers = ", ".join(tenant.phone_number_ids)
        lines.append(f"  {tenant.id:<10} numbers {numbers}  token {tenant.token}{flag}")
    lines.append("recipient rules (first match decides):")
    for rule in sandbox.state.config.rules:
        answer = rule.code or rule.status or ("hang" if rule.hang else rule.body)
        lines.append(f"  {rule.match:<12} {answer!s:<7} {rule.note}")
    hooks = sandbox.state.config.webhooks
    if hooks.url is not None:
        lines.append(f"status webhooks to {hooks.url} (failed after acceptance):")
        for failure in hooks.failed:
            lines.append(f"  {failure.match:<12} {failure.code!s:<7} {failure.note}")
    lines.append(f"admin: {sandbox.plain_url}/_sandbox/config, /requests, /stats, /tenants")
    return "\n".join(lines)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    if sys.platform == "win32":  # pragma: no cover
        return None
    import uvloop

    return uvloop.new_event_loop


def run_sandbox(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    config: SandboxConfig | None = None,
    *,
    announce: Callable[[str], None] | None = None,
    tls: bool = False,
    tls_dir: Path | None = None,
    plain_port: int = 0,
    http2: bool = True,
    http2_max_streams: int = DEFAULT_MAX_STREAMS,
) -> None:
    """Serve in the foreground until SIGINT or SIGTERM (the ``sandbox`` command)."""

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        started = start_sandbox(
            host,
            port,
            config,
            tls=tls,
            tls_dir=tls_dir,
            plain_port=plain_port,
            http2=http2,
            http2_max_streams=http2_max_streams,
        )
        async with await started as sandbox:
            if announce is None:
                print(describe(sandbox), flush=True)
            else:
                announce(describe(sandbox))
            await stop.wait()

    tune_for_serving()
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(serve())
