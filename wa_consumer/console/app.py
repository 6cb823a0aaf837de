"""``wa-consumer console``: the aiohttp application, and its start and stop.

Start-up order: the accounts (no user and no token: it does not start), the session secret
(unset: a random one, and a warning that sessions end at a restart), PostgreSQL (a small pool
of its own; the console never migrates, the daemon does), RabbitMQ (a robust connection for
queue depths, replays and purges), then listening. Stop: no new requests, running replay
jobs stopped between two batches (``Jobs.close``), then the broker and the pool.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
from contextlib import suppress
from importlib.resources import files
from typing import Any, Final

import aiormq
import asyncpg
from aiohttp import web

from ..controls import TenantControls
from ..errors import SettingsError, Unreachable, WaConsumerError
from ..ledger.dead import DeadLetters
from ..logs import get_logger
from ..settings import Settings, masked
from ..startup import Startup, StartupStopped, connect_broker, transient
from . import api, pages
from .auth import Accounts, Sessions
from .guard import auth_middleware, errors_middleware, headers_middleware
from .jobs import Jobs
from .state import CONSOLE, Console

log = get_logger("console")

_MAX_BODY: Final = 2 * 1024 * 1024  # an edited message (256 KiB by default) and its form
_POOL_SIZE: Final = 4


def build_app(console: Console) -> web.Application:
    """The application: middlewares, routes, static files; ``console`` its resources."""
    app = web.Application(
        client_max_size=_MAX_BODY,
        middlewares=[headers_middleware, errors_middleware, auth_middleware],
    )
    app[CONSOLE] = console
    pages.add_routes(app)
    api.add_routes(app)
    app.router.add_static("/static/", str(files("wa_consumer.console") / "static"))
    return app


def routes(app: web.Application) -> set[tuple[str, str]]:
    """(METHOD, path) of every route but the static files, as OpenAPI writes paths."""
    out = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("formatter") or info.get("path")
        if path is None or route.method == "HEAD":
            continue  # the static directory, and the HEAD aiohttp adds to each GET
        out.add((route.method, path))
    return out


def session_secret(settings: Settings) -> bytes:
    if settings.console_secret is not None:
        return settings.console_secret.get_secret_value().encode()
    log.warning(
        "console_random_secret",
        detail="WA_CONSOLE_SECRET is not set: sessions are signed with a random secret and "
        "end when the console restarts (and another replica cannot read them)",
    )
    return secrets.token_bytes(32)


async def open_pool(settings: Settings) -> asyncpg.Pool:
    """The console's own small pool; ``Unreachable`` while waiting may help."""
    url = settings.database_url
    if not url:
        raise SettingsError("WA_DATABASE_URL is not set: the console reads the ledger")
    try:
        pool: asyncpg.Pool = await asyncpg.create_pool(
            url,
            min_size=1,
            max_size=_POOL_SIZE,
            timeout=5,
            command_timeout=settings.database_statement_timeout_ms / 1000 + 1,
            server_settings={"statement_timeout": str(settings.database_statement_timeout_ms)},
        )
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        kind = Unreachable if transient(exc) else WaConsumerError
        raise kind(f"cannot open the ledger: {masked(str(exc))}") from None
    return pool


class ConsoleServer:
    """The console in this process: ``start``, ``close``, or ``run`` until SIGTERM/SIGINT."""

    def __init__(self, settings: Settings) -> None:
        self.accounts = Accounts(settings.console_users, settings.console_api_tokens)
        if self.accounts.empty:
            raise SettingsError(
                "WA_CONSOLE_USERS and WA_CONSOLE_API_TOKENS are both empty: nobody could log "
                "in (make a user's hash with `wa-consumer console hash-password`)"
            )
        if not settings.database_url:
            raise SettingsError("WA_DATABASE_URL is not set: the console reads the ledger")
        self._settings = settings
        self._stop = asyncio.Event()
        self._pool: asyncpg.Pool | None = None
        self._broker: Any = None
        self._runner: web.AppRunner | None = None
        self.console: Console | None = None
        self.port: int | None = None

    async def start(self, host: str | None = None, port: int | None = None) -> int:
        """Connect, then listen (port 0: any free one); returns the bound port."""
        s = self._settings
        try:
            wait = Startup(s.startup_wait_seconds, self._stop)
            self._pool = await wait.until_up("postgresql", lambda: open_pool(s))
            self._broker = await wait.until_up("rabbitmq", lambda: connect_broker(s.amqp_url))
            pool = self._pool
            self.console = Console(
                settings=s,
                db=pool,
                broker=self._broker,
                dead=DeadLetters(pool),
                controls=TenantControls(s, pool, self._broker),
                accounts=self.accounts,
                sessions=Sessions(session_secret(s)),
                jobs=Jobs(),
            )
            self.port = await self._listen(
                s.console_host if host is None else host, s.console_port if port is None else port
            )
        except BaseException:
            await self.close()
            raise
        return self.port

    async def _listen(self, host: str, port: int) -> int:
        assert self.console is not None
        runner = web.AppRunner(
            build_app(self.console), access_log=None, handle_signals=False, shutdown_timeout=5
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            await runner.cleanup()
            raise WaConsumerError(
                f"cannot listen on {host}:{port} (WA_CONSOLE_HOST, WA_CONSOLE_PORT): "
                f"{exc.strerror or exc}"
            ) from None
        self._runner = runner
        bound: int = runner.addresses[0][1]
        log.info("console_listening", host=host, port=bound)
        return bound

    async def close(self) -> None:
        """Stop listening, stop running jobs between batches, close the broker and the pool."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        if self.console is not None:
            await self.console.jobs.close()
        broker, self._broker = self._broker, None
        if broker is not None:
            with suppress(aiormq.exceptions.AMQPError, OSError, TimeoutError, RuntimeError):
                await asyncio.wait_for(broker.close(), 5)
        pool, self._pool = self._pool, None
        if pool is not None:
            with suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                await asyncio.wait_for(pool.close(), 5)

    def request_stop(self) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)

    async def run(
        self, host: str | None = None, port: int | None = None, *, signals: bool = False
    ) -> int:
        """Start, serve until told to stop (``signals``: SIGTERM/SIGINT too), close."""
        if signals:
            self.install_signal_handlers()
        try:
            await self.start(host, port)
        except StartupStopped:
            return 0
        try:
            await self._stop.wait()
            log.info("console_stopping")
        finally:
            await self.close()
        return 0
