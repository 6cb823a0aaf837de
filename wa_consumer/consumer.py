"""The daemon's lifecycle: connect, declare, consume, and stop within a deadline.

Start-up and shutdown order are both visible in ``Daemon.run``. The broker connection is
aio-pika's robust one: after a broker restart or a dropped connection it reconnects and
restores the channels, QoS and consumer by itself.
"""

from __future__ import annotations

import asyncio
import signal
from contextlib import suppress

import aio_pika
import aiohttp
import aiormq
from aio_pika.abc import AbstractQueue, AbstractRobustConnection, ExchangeType
from yarl import URL

from .credentials import CredentialCache, FallbackSource, StaticSource, TenantServiceSource
from .errors import WaConsumerError
from .graph import GraphClient, make_session
from .ledger import PostgresLedger
from .logs import get_logger
from .pipeline import Pipeline, Policy
from .seams import Ledger, Limiter
from .settings import Settings
from .settle import Settler
from .topology import Topology, declare

log = get_logger("consumer")


def build_credentials(settings: Settings, session: aiohttp.ClientSession) -> CredentialCache:
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
        source, ttl=settings.credential_ttl_seconds, maxsize=settings.credential_cache_size
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
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        self._pause_task: asyncio.Task[None] | None = None

    def request_stop(self) -> None:
        """First call: graceful stop. Second call: stop at once (the broker keeps the rest)."""
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
        ledger = self._ledger or await _open_ledger(s)
        connection = await _connect(s.amqp_url)
        session = make_session(limit=s.prefetch, timeout=s.http_timeout_seconds)
        try:
            await declare(connection, self.topology)
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
            self.pipeline = pipeline = Pipeline(
                policy=build_policy(s, self.topology),
                credentials=build_credentials(s, session),
                graph=GraphClient(session, s.graph_api_url, s.graph_api_version),
                settler=settler,
                ledger=ledger,
                limiter=self._limiter,
                on_ledger_down=self._ledger_down,
            )
            self._queue = await consume_channel.declare_queue(s.queue, passive=True)
            await self._consume()

            await self._stop.wait()
            await self._shutdown(pipeline)
        finally:
            if self._pause_task is not None:
                self._pause_task.cancel()
            await session.close()
            if isinstance(ledger, PostgresLedger):
                await ledger.close()
            with suppress(Exception):
                await asyncio.wait_for(connection.close(), 5)
        return 0

    async def _consume(self) -> None:
        assert self._queue is not None
        assert self.pipeline is not None
        self._tag = await self._queue.consume(self.pipeline.handle)
        self.consuming.set()
        log.info("consuming", queue=self.settings.queue, prefetch=self.settings.prefetch)

    async def _stop_consuming(self) -> None:
        self.consuming.clear()
        if self._queue is not None and self._tag is not None:
            with suppress(Exception):
                await asyncio.wait_for(self._queue.cancel(self._tag), 5)
            self._tag = None

    def _ledger_down(self) -> None:
        """The ledger cannot be reached: pause consuming until it can (one task, one log)."""
        if self._pause_task is None and not self._stop.is_set():
            self._pause_task = asyncio.create_task(self._pause_until_ledger_is_back())

    async def _pause_until_ledger_is_back(self) -> None:
        pipeline, ledger = self.pipeline, self._ledger_in_use
        assert pipeline is not None
        assert ledger is not None
        log.error("consuming_paused", reason="ledger unreachable; messages wait in RabbitMQ")
        pipeline.stopping = True  # what has not reached the send goes back to the queue
        await self._stop_consuming()
        try:
            while not self._stop.is_set() and not await ledger.ping():
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 1.0)
            if self._stop.is_set():
                return
            pipeline.stopping = False
            await self._consume()
            log.info("consuming_resumed")
        finally:
            self._pause_task = None

    @property
    def _ledger_in_use(self) -> PostgresLedger | None:
        ledger = self.pipeline.ledger if self.pipeline else None
        return ledger if isinstance(ledger, PostgresLedger) else None

    async def _shutdown(self, pipeline: Pipeline) -> None:
        s = self.settings
        log.info(
            "shutdown_started", in_flight=len(pipeline.in_flight), grace_s=s.shutdown_grace_seconds
        )
        pipeline.stopping = True
        await self._stop_consuming()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + s.shutdown_grace_seconds
        hard = asyncio.ensure_future(self._hard_stop.wait())
        while pipeline.in_flight and not hard.done() and (left := deadline - loop.time()) > 0:
            await asyncio.wait(
                [*pipeline.in_flight, hard], timeout=left, return_when=asyncio.FIRST_COMPLETED
            )
        hard.cancel()
        pending = set(pipeline.in_flight)
        for task in pending:
            task.cancel()  # each hands its message back, shielded settle included
        if pending:
            await asyncio.wait(pending, timeout=5)
        await pipeline.settler.acks.drain()
        log.info("shutdown_complete", cancelled=len(pending))


async def _open_ledger(settings: Settings) -> PostgresLedger | None:
    if not settings.database_url:
        return None
    return await PostgresLedger.connect(
        settings.database_url,
        pool_size=settings.database_pool_size,
        statement_timeout_ms=settings.database_statement_timeout_ms,
        lease_seconds=settings.claim_lease_seconds,
        max_deliveries=settings.max_deliveries,
    )


async def _connect(url: str) -> AbstractRobustConnection:
    try:
        return await aio_pika.connect_robust(url, timeout=10, reconnect_interval=1)
    except (OSError, aiormq.exceptions.AMQPError) as exc:
        raise WaConsumerError(f"cannot connect to RabbitMQ at {_safe_url(url)}: {exc}") from None


def _safe_url(url: str) -> str:
    """The URL without its password."""
    u = URL(url)
    return str(u.with_password("***")) if u.password else url
