"""The daemon's lifecycle: connect, declare, consume, and stop within a deadline.

Start-up and shutdown order are both visible in ``Daemon.run``. The broker connection is
aio-pika's robust one: after a broker restart or a dropped connection it reconnects and
restores the channels and QoS by itself, and the daemon consumes again on the reopened
channel. It consumes below aio-pika's queue API, on the channel's aiormq channel (see
``delivery``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import uuid
from collections.abc import Callable
from contextlib import suppress

import aiohttp
from aio_pika.abc import (
    AbstractRobustChannel,
    AbstractRobustConnection,
    ExchangeType,
)
from aiormq.abc import DeliveredMessage

from .alerts import Alerter
from .controls.gate import TenantGate
from .controls.observe import ControlMetrics
from .credentials import CredentialCache, FallbackSource, StaticSource, TenantServiceSource
from .delivery import Delivery
from .graph import GraphClient
from .health import HealthServer
from .ledger import PostgresLedger
from .limits import RateLimiter, build_limiter
from .logs import get_logger
from .metrics import Fanout, Metrics
from .pipeline import Pipeline, Policy
from .probe import QueueProbe, watched_queues
from .seams import Gate, Ledger, Limiter, NullGate, NullLedger
from .settings import Settings
from .settle import Settler
from .startup import Startup, StartupStopped, connect_broker
from .topology import Topology, prepare
from .tracing import build as build_tracer
from .transport import build_transport
from .transport.aiohttp import make_session
from .webhooks.consumer import StatusConsumer
from .webhooks.observe import StatusMetrics

log = get_logger("consumer")


def build_credentials(
    settings: Settings,
    session: aiohttp.ClientSession,
    observe: Callable[[str], None] | None = None,
) -> CredentialCache:
    """Static credentials first, then the tenant service when one is configured."""
    service = None
    if settings.tenant_service_url:
        token = settings.tenant_service_token
        service = TenantServiceSource(
            session,
            settings.tenant_service_url,
            token.get_secret_value() if token else None,
            timeout=settings.tenant_service_timeout_seconds,
        )
    source = FallbackSource(StaticSource(settings.static_credentials), service)
    return CredentialCache(
        source,
        ttl=settings.credential_ttl_seconds,
        maxsize=settings.credential_cache_size,
        observe=observe,
    )


def build_policy(settings: Settings, topology: Topology) -> Policy:
    return Policy(
        retry_delays=tuple(settings.retry_delays),
        retry_queues=topology.retry_queues,
        max_retries=settings.max_retries,
        rate_limit_min_delay=settings.rate_limit_min_delay,
        pair_limit_min_delay=settings.pair_limit_min_delay,
        max_age_seconds=settings.max_message_age_seconds,
        max_message_bytes=settings.max_message_bytes,
        max_deliveries=settings.max_deliveries,
        throttle_delay=settings.throttle_requeue_seconds,
        # Held by another consumer: the short wait too. A holder killed with -9 is known gone
        # within three heartbeats, and its messages should go out within seconds, not a step.
        busy_delay=settings.throttle_requeue_seconds,
    )


class Daemon:
    """``wa-consumer run``: consume ``outbound-processed`` until told to stop."""

    def __init__(
        self, settings: Settings, *, ledger: Ledger | None = None, limiter: Limiter | None = None
    ) -> None:
        self.settings = settings
        self.topology = Topology.from_settings(settings)
        self._ledger = ledger
        self._limiter = limiter
        self._stop = asyncio.Event()
        self._hard_stop = asyncio.Event()
        self.pipeline: Pipeline | None = None
        self.consuming = asyncio.Event()
        self._channel: AbstractRobustChannel | None = None  # the consuming channel
        self._tag: str | None = None
        self._pause_task: asyncio.Task[None] | None = None
        self.metrics = Metrics(tenant_labels=settings.metrics_tenant_labels)
        self.alerts = Alerter.from_settings(settings, self.metrics)
        self.tracer = build_tracer(settings.otel_enabled)  # NullTracer unless WA_OTEL_ENABLED
        self.metrics_port: int | None = None  # bound port of /metrics, /healthz, /readyz
        self._connection: AbstractRobustConnection | None = None
        self._ledger_reachable = True  # the last ping's answer
        self.statuses: StatusConsumer | None = None  # SPEC §13, with a ledger that keeps them

    def request_stop(self) -> None:
        """First call: graceful stop. Second call: end the grace at once; what has not been
        claimed is handed back, and a claimed message (its send may be on the wire) still
        finishes within its own timeouts and is recorded and settled."""
        if self._stop.is_set():
            log.warning("second_signal_stopping_now")
            self._hard_stop.set()
        self._stop.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)

    async def run(self) -> int:
        """Start-up, consume until told to stop, shut down; returns the exit code."""
        s = self.settings
        try:
            ledger, connection = await self._dependencies()
        except StartupStopped:
            log.info("startup_stopped")  # SIGTERM while waiting: nothing consumed, exit 0
            return 0
        self._connection = connection
        await ledger.start()  # heartbeats: from here on, this daemon's claims are alive
        session = make_session(limit=s.prefetch, timeout=s.http_timeout_seconds)  # credentials
        transport = build_transport(s)  # the Cloud API's sends (WA_GRAPH_TRANSPORT)
        http = HealthServer(self.metrics.registry, self.readiness)
        probe: asyncio.Task[None] | None = None
        own_limiter = build_limiter(s) if self._limiter is None else None
        gate: Gate = NullGate()
        try:
            if s.metrics_port:  # 0: no HTTP server
                self.metrics_port = await http.start(s.metrics_host, s.metrics_port)
            await self.alerts.start()
            await transport.start()
            await prepare(connection, self.topology, passive=s.declare_topology == "passive")
            consume_channel = await connection.channel()
            await consume_channel.set_qos(prefetch_count=s.prefetch)
            publish_channel = await connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
            dlx = await publish_channel.declare_exchange(
                s.dead_letter_exchange, ExchangeType.TOPIC, durable=True, passive=True
            )
            settler = Settler(
                publish_channel,
                dlx,
                main_queue=s.queue,
                dead_routing_key=s.dead_routing_key,
                error_text_bytes=s.error_text_bytes,
            )
            if s.database_url:  # tenant controls live in the ledger's database
                gate = TenantGate(
                    s,
                    connection,
                    me=f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
                    metrics=ControlMetrics(self.metrics.registry),
                    alerts=self.alerts,
                )
                await gate.start()  # the pauses in force hold from the first message
            self.pipeline = pipeline = Pipeline(
                policy=build_policy(s, self.topology),
                credentials=build_credentials(s, session, self.metrics.credential),
                graph=GraphClient(transport, s.graph_api_url, s.graph_api_version),
                settler=settler,
                ledger=ledger,
                limiter=self._limiter or own_limiter,
                observer=Fanout(self.metrics, self.alerts),
                on_ledger_down=self._ledger_down,
                tracer=self.tracer,
                gate=gate,
            )
            await consume_channel.declare_queue(s.queue, passive=True)  # there, or fail now
            self._channel = consume_channel
            consume_channel.reopen_callbacks.add(self._consume_again)
            queue_probe = self._observe(connection, pipeline)
            # Before consuming: like every step of start-up, a failure here ends start-up;
            # once started, its robust channels come back after a broker cut by themselves.
            await self._consume_statuses(connection, ledger)
            await self._consume()
            probe = asyncio.create_task(self._sample(queue_probe), name="queue-probe")

            await self._stop.wait()
            await self._shutdown(pipeline)
        finally:
            if self._pause_task is not None:
                self._pause_task.cancel()
            if self.statuses is not None:
                await self.statuses.close(grace=min(5.0, s.shutdown_grace_seconds))
            if probe is not None:
                probe.cancel()
                await asyncio.wait([probe], timeout=5)
            await gate.close()
            await self.alerts.close(grace=min(5.0, s.shutdown_grace_seconds))
            await http.close()
            await transport.close()
            await session.close()
            if own_limiter is not None:
                await own_limiter.aclose()
            await ledger.close()
            with suppress(Exception):
                await asyncio.wait_for(connection.close(), 5)
        return 0

    async def _dependencies(self) -> tuple[Ledger, AbstractRobustConnection]:
        """PostgreSQL (with a ledger), then RabbitMQ, waited for within one bound (startup)."""
        s = self.settings
        start = Startup(s.startup_wait_seconds, self._stop)
        opened = self._ledger or await start.until_up("postgresql", lambda: _open_ledger(s))
        ledger = opened or NullLedger()
        try:
            return ledger, await start.until_up("rabbitmq", lambda: connect_broker(s.amqp_url))
        except BaseException:
            await ledger.close()
            raise

    async def _consume_statuses(self, connection: AbstractRobustConnection, ledger: Ledger) -> None:
        """Delivery statuses into the ledger, when it keeps them and they are wanted."""
        store = ledger.statuses() if self.settings.statuses_enabled else None
        if store is None:
            return
        observer = StatusMetrics(self.metrics.registry, self.alerts)
        self.statuses = StatusConsumer(connection, self.settings, store, observer)
        await self.statuses.start()

    async def _consume(self) -> None:
        assert self._channel is not None
        assert self.pipeline is not None
        receive = self.pipeline.receive

        async def on_message(message: DeliveredMessage) -> None:
            # Called in delivery order. The pipeline runs the message in a task of its own:
            # aiormq cancels its own tasks when the channel closes, and a send on the wire
            # must outlive a broker cut.
            receive(Delivery(message))

        channel = await self._channel.get_underlay_channel()
        result = await channel.basic_consume(self.settings.queue, on_message, no_ack=False)
        self._tag = result.consumer_tag
        self.consuming.set()
        log.info("consuming", queue=self.settings.queue, prefetch=self.settings.prefetch)

    async def _consume_again(self, _: object) -> None:
        """The channel came back after a reconnect: its consumer did not, so consume again."""
        if self._tag is None or self._stop.is_set():
            return  # paused or stopping: whoever resumes consumes
        try:
            await self._consume()
        except Exception as exc:  # noqa: BLE001 - logged; the next reconnect tries again
            self.consuming.clear()  # /readyz says so
            log.error("consume_failed", error=f"{type(exc).__name__}: {exc}"[:300])

    async def _stop_consuming(self) -> None:
        self.consuming.clear()
        tag, self._tag = self._tag, None
        if self._channel is not None and tag is not None:
            with suppress(Exception):
                channel = await asyncio.wait_for(self._channel.get_underlay_channel(), 5)
                await asyncio.wait_for(channel.basic_cancel(tag), 5)

    def _ledger_down(self) -> None:
        """The ledger cannot be reached: pause consuming until it can (one task, one log)."""
        if self._pause_task is None and not self._stop.is_set():
            self._pause_task = asyncio.create_task(self._pause_until_ledger_is_back())

    async def _pause_until_ledger_is_back(self) -> None:
        pipeline = self.pipeline
        assert pipeline is not None
        ledger = pipeline.ledger
        log.error("consuming_paused", reason="ledger unreachable; messages wait in RabbitMQ")
        pipeline.pause()  # what has not been claimed goes back to the queue
        await self._stop_consuming()
        try:
            while not self._stop.is_set() and not await ledger.ping():
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 1.0)
            if self._stop.is_set():
                return
            pipeline.resume()
            while not self._stop.is_set():
                try:
                    await self._consume()
                    break
                except Exception as exc:  # noqa: BLE001 - the broker may be reconnecting too
                    log.warning("consume_failed", error=f"{type(exc).__name__}: {exc}"[:300])
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 1.0)
            log.info("consuming_resumed")
        finally:
            self._pause_task = None

    def _observe(self, connection: AbstractRobustConnection, pipeline: Pipeline) -> QueueProbe:
        """Bind the gauges read at scrape time; the probe of queue depths and ages."""
        ledger = pipeline.ledger
        self.metrics.retry_delays(tuple(self.settings.retry_delays))
        self.metrics.watch(
            in_flight=lambda: len(pipeline.in_flight),
            broker_connected=self._broker_up,
            ready=self._ready_now,
            ledger_up=(lambda: ledger.healthy and self._ledger_reachable)
            if self._has_ledger
            else None,
        )
        if isinstance(ledger, PostgresLedger):
            postgres = ledger  # bound for the lambda (read at scrape time)
            postgres.observe_batches(self.metrics.watch_ledger(lambda: postgres.results_held))
        if isinstance(pipeline.limiter, RateLimiter):
            self.metrics.watch_limiter(pipeline.limiter)
        queues = watched_queues(
            self.settings,
            self.topology.retry_queues.values(),
            peek_main=pipeline.ledger.counts_deliveries,
        )
        return QueueProbe(connection, queues, self.metrics, on_main_age=self.alerts.queue_age)

    async def _sample(self, probe: QueueProbe) -> None:
        """Every interval: queue depths and ages, and whether the ledger answers."""
        while True:
            await probe.sample()
            await self._ping_ledger()
            await asyncio.sleep(self.settings.metrics_queue_interval_seconds)

    async def readiness(self) -> dict[str, str]:
        """``/readyz``: broker connected, consuming, ledger reachable (pinged now)."""
        checks = {"broker": "ok" if self._broker_up() else "disconnected"}
        if self.consuming.is_set():
            checks["consuming"] = "ok"
        else:
            paused = self._pause_task is not None
            checks["consuming"] = "paused: ledger unreachable" if paused else "not consuming"
        if self._has_ledger:
            checks["ledger"] = "ok" if await self._ping_ledger() else "unreachable"
        return checks

    def _broker_up(self) -> bool:
        c = self._connection
        return c is not None and not c.is_closed and c.connected.is_set()

    @property
    def _has_ledger(self) -> bool:
        return self.pipeline is not None and self.pipeline.ledger.counts_deliveries

    def _ready_now(self) -> bool:
        ledger_ok = not self._has_ledger or (
            self._current_ledger().healthy and self._ledger_reachable
        )
        return self._broker_up() and self.consuming.is_set() and ledger_ok

    def _current_ledger(self) -> Ledger:
        assert self.pipeline is not None
        return self.pipeline.ledger

    async def _ping_ledger(self) -> bool:
        if self._has_ledger:
            self._ledger_reachable = await self._current_ledger().ping()
        return self._ledger_reachable

    async def _shutdown(self, pipeline: Pipeline) -> None:
        s = self.settings
        log.info(
            "shutdown_started", in_flight=len(pipeline.in_flight), grace_s=s.shutdown_grace_seconds
        )
        pipeline.pause()
        await self._stop_consuming()
        handed_back = await pipeline.drain(s.shutdown_grace_seconds, self._hard_stop)
        log.info("shutdown_complete", handed_back=handed_back)


async def _open_ledger(settings: Settings) -> Ledger | None:
    if not settings.database_url:
        return None
    return await PostgresLedger.connect(
        settings.database_url,
        pool_size=settings.database_pool_size,
        statement_timeout_ms=settings.database_statement_timeout_ms,
        lease_seconds=settings.claim_lease_seconds,
        heartbeat_seconds=settings.ledger_heartbeat_seconds,
        max_deliveries=settings.max_deliveries,
    )
