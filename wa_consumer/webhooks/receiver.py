"""``wa-consumer webhook``: Meta's webhooks in, checked, and queued raw (SPEC §13).

Why it is built this way:

- Nothing is lost between the socket and the broker. A body is answered 200 only after the
  broker confirmed a persistent copy routed to a queue (``mandatory``, publisher confirm).
  Anything short of that (the broker away or reconnecting, a nack, a return, no confirm
  within ``WA_WEBHOOK_PUBLISH_TIMEOUT_SECONDS``) is a 503, and Meta sends the body again.
  A body confirmed but whose answer was lost comes twice: the status consumer applies a
  repeat as a no-op.
- While the broker is away, 503 at once rather than holding requests until it is back: Meta
  keeps the bodies and retries them, and held requests would pile up in this process.
- Fast: one publishing channel for every request, their confirms overlapping on it (aiormq
  holds its channel lock only while writing one message's frames); the body is not parsed.
- An unsigned receiver never runs: without an app secret the constructor raises
  ``SettingsError``. A bad signature is a 401 and a count; its warning line is logged at most
  once per 10 s, saying how many it stands for, so a flood is not a log flood.
- No secret (app secrets, verify token, AMQP password) goes into a line, an error or a repr.

Routes: ``GET {path}`` (subscription check), ``POST {path}``, ``/healthz``, ``/readyz`` and
``/metrics`` (the receiver's own registry), on ``WA_WEBHOOK_HOST:WA_WEBHOOK_PORT``.
"""

from __future__ import annotations

import asyncio
import hmac
import signal
import time
from contextlib import suppress
from typing import Final

import aio_pika
import aiormq
from aio_pika.abc import AbstractExchange, AbstractRobustChannel, AbstractRobustConnection
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client.exposition import choose_encoder

from ..errors import SettingsError, WaConsumerError
from ..logs import get_logger
from ..settings import Settings, masked
from ..startup import Startup, StartupStopped, connect_broker
from ..topology import Topology, prepare
from .receiver_metrics import ReceiverMetrics, Result, Throttled
from .signature import HEADER, verify

log = get_logger("webhook")

#: Connect, declare and open the channel at start: RabbitMQ answers in milliseconds.
START_TIMEOUT: Final = 30.0
_PROBES: Final = ("/healthz", "/readyz", "/metrics")
# What aio-pika and aiormq raise when the connection or channel goes away under a publish
# (a channel asked of a closed connection is a bare RuntimeError), or the broker says no.
_BROKER_ERRORS: Final = (aiormq.exceptions.AMQPError, ConnectionError, OSError, RuntimeError)
_ANSWERS: Final = {
    Result.ACCEPTED: (200, "ok"),
    Result.BAD_SIGNATURE: (401, "bad signature"),
    Result.UNAVAILABLE: (503, "unavailable, retry later"),
    Result.TOO_LARGE: (413, "body too large"),
    Result.BAD_REQUEST: (400, "bad request"),
}


class WebhookReceiver:
    """Meta's webhooks over HTTP, published with confirms to ``WA_WEBHOOK_EXCHANGE``.

    ``start`` connects, declares the topology and listens; ``close`` stops listening, lets
    requests in flight finish and closes the broker side; ``run`` is both around a wait for
    SIGTERM/SIGINT (``install_signal_handlers``) or ``request_stop``.
    """

    def __init__(self, settings: Settings) -> None:
        if not settings.webhook_secrets:
            raise SettingsError(
                "WA_WEBHOOK_APP_SECRET (or WA_WEBHOOK_APP_SECRETS) is not set: a receiver "
                "that cannot check signatures would queue anyone's bodies, so it does not start"
            )
        if settings.webhook_path in _PROBES:
            raise SettingsError(f"WA_WEBHOOK_PATH: {settings.webhook_path} is a probe's path")
        self._settings = settings
        self._secrets = settings.webhook_secrets
        token = settings.webhook_verify_token
        self._verify_token = token.get_secret_value().encode() if token is not None else None
        self.metrics = ReceiverMetrics(lambda: self.ready)
        self._warn = Throttled(log)
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._runner: web.AppRunner | None = None
        self._stop = asyncio.Event()
        self._in_flight = 0  # requests being read or published: bounds the bodies held
        self.port: int | None = None

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self, host: str | None = None, port: int | None = None) -> int:
        """Connect, declare the topology, open the channel, then listen (port 0: any free).

        Returns the bound port. The queue exists before the first body can be accepted.
        """
        s = self._settings
        try:
            self._connection = await Startup(s.startup_wait_seconds, self._stop).until_up(
                "rabbitmq", lambda: connect_broker(s.amqp_url)
            )
            async with asyncio.timeout(START_TIMEOUT):
                await prepare(
                    self._connection,
                    Topology.from_settings(s),
                    passive=s.declare_topology == "passive",
                )
                channel = await self._connection.channel(
                    publisher_confirms=True, on_return_raises=True
                )
                self._exchange = await channel.declare_exchange(
                    s.webhook_exchange, aio_pika.ExchangeType.TOPIC, durable=True, passive=True
                )
            self._channel = channel
            self.port = await self._listen(
                s.webhook_host if host is None else host, s.webhook_port if port is None else port
            )
        except TimeoutError:
            await self.close()
            raise WaConsumerError(f"RabbitMQ did not answer within {START_TIMEOUT:g}s") from None
        except BaseException:
            await self.close()
            raise
        return self.port

    async def _listen(self, host: str, port: int) -> int:
        s = self._settings
        app = web.Application(client_max_size=s.webhook_max_body_bytes)
        app.router.add_get(s.webhook_path, self._challenge)
        app.router.add_post(s.webhook_path, self._receive)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=s.shutdown_grace_seconds
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, backlog=1024).start()
        except OSError as exc:
            await runner.cleanup()
            raise WaConsumerError(
                f"cannot listen on {host}:{port} (WA_WEBHOOK_HOST, WA_WEBHOOK_PORT): "
                f"{exc.strerror or exc}"
            ) from None
        self._runner = runner
        bound: int = runner.addresses[0][1]
        log.info("webhook_listening", host=host, port=bound, path=s.webhook_path)
        return bound

    async def close(self) -> None:
        """Stop listening, let requests in flight finish, then close channel and connection."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()  # bounded by WA_SHUTDOWN_GRACE_SECONDS
        channel, self._channel, self._exchange = self._channel, None, None
        connection, self._connection = self._connection, None
        for closing in (channel, connection):
            if closing is not None:
                with suppress(*_BROKER_ERRORS, TimeoutError):
                    await asyncio.wait_for(closing.close(), 5)

    def request_stop(self) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)

    async def run(self) -> int:
        """Start, serve until told to stop, close; returns the exit code (0 also when a stop
        came while start-up waited for RabbitMQ)."""
        try:
            await self.start()
        except StartupStopped:
            log.info("startup_stopped")
            return 0
        try:
            await self._stop.wait()
            log.info("webhook_stopping")
        finally:
            await self.close()
        log.info("webhook_stopped")
        return 0

    @property
    def ready(self) -> bool:
        """The broker connection and the publishing channel are both up."""
        c, ch = self._connection, self._channel
        return c is not None and c.connected.is_set() and ch is not None and not ch.is_closed

    # -- Meta's routes -------------------------------------------------------------------

    async def _challenge(self, request: web.Request) -> web.Response:
        """Meta's subscription check: echo ``hub.challenge`` to whoever knows the token."""
        query, token = request.query, self._verify_token
        given = query.get("hub.verify_token", "").encode("utf-8", "surrogatepass")
        challenge = query.get("hub.challenge")
        if (
            token is not None
            and challenge is not None
            and query.get("hub.mode") == "subscribe"
            and hmac.compare_digest(given, token)
        ):
            self.metrics.verified.inc()
            log.info("webhook_subscription_verified", remote=request.remote)
            return web.Response(text=challenge, content_type="text/plain")
        self.metrics.refused.inc()
        self._warn.warning(
            "webhook_subscription_refused", remote=request.remote, configured=token is not None
        )
        return web.Response(status=403, text="forbidden")

    async def _receive(self, request: web.Request) -> web.Response:
        """Check, publish with a confirm, and only then answer 200."""
        if (request.content_length or 0) > self._settings.webhook_max_body_bytes:
            return self._answer(Result.TOO_LARGE)
        if self._in_flight >= self._settings.webhook_max_concurrent:
            self._warn.warning("webhook_busy", limit=self._settings.webhook_max_concurrent)
            return self._answer(Result.UNAVAILABLE)  # before the body is read: Meta retries
        self._in_flight += 1
        try:
            return await self._check_and_publish(request)
        finally:
            self._in_flight -= 1

    async def _check_and_publish(self, request: web.Request) -> web.Response:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:  # chunked, past client_max_size
            return self._answer(Result.TOO_LARGE)
        except (ConnectionError, HttpProcessingError):  # gone, or a broken body
            return self._answer(Result.BAD_REQUEST)
        if not verify(body, request.headers.get(HEADER), self._secrets):
            self._warn.warning(
                "webhook_bad_signature", remote=request.remote, signed=HEADER in request.headers
            )
            return self._answer(Result.BAD_SIGNATURE)
        if not body:
            return self._answer(Result.BAD_REQUEST)
        return self._answer(await self._publish(body))

    async def _publish(self, body: bytes) -> Result:
        exchange = self._exchange
        if exchange is None or not self.ready:
            self._warn.warning("webhook_unavailable", reason="broker connection down")
            return Result.UNAVAILABLE
        message = aio_pika.Message(
            body, content_type="application/json", delivery_mode=aio_pika.DeliveryMode.PERSISTENT
        )
        started = time.perf_counter()
        try:
            # One deadline for all of it: a robust channel waits for a reconnect unbounded.
            async with asyncio.timeout(self._settings.webhook_publish_timeout_seconds):
                confirmation = await exchange.publish(
                    message, self._settings.webhook_routing_key, mandatory=True
                )
        except (*_BROKER_ERRORS, TimeoutError) as exc:  # returned and nacked are AMQPErrors
            detail = masked(str(exc))[:200]
            self._warn.warning("webhook_unpublished", error=type(exc).__name__, detail=detail)
            return Result.UNAVAILABLE
        if not isinstance(confirmation, aiormq.spec.Basic.Ack):
            self._warn.warning("webhook_unpublished", error=type(confirmation).__name__)
            return Result.UNAVAILABLE
        self.metrics.publish_seconds.observe(time.perf_counter() - started)
        return Result.ACCEPTED

    def _answer(self, result: Result) -> web.Response:
        self.metrics.results[result].inc()
        status, text = _ANSWERS[result]
        return web.Response(status=status, text=text)

    # -- probes ---------------------------------------------------------------------------

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _readyz(self, request: web.Request) -> web.Response:
        """Like the daemon's: each check's state, 503 naming what failed."""
        c, ch = self._connection, self._channel
        broker_up = c is not None and c.connected.is_set()
        checks = {
            "broker": "ok" if broker_up else "disconnected",
            "channel": "ok" if ch is not None and not ch.is_closed else "closed",
        }
        failed = [name for name, state in checks.items() if state != "ok"]
        body = {"status": "not ready" if failed else "ready", "checks": checks, "failed": failed}
        return web.json_response(body, status=503 if failed else 200)

    async def _metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        registry = self.metrics.registry
        return web.Response(body=encoder(registry), headers={"Content-Type": content_type})
