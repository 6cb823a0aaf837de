"""What the integration tests share: settings with unique names, a daemon in-process,
a broker client to publish and to read queues, and waiting by condition."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import aio_pika
import orjson
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

from wa_consumer.consumer import Daemon
from wa_consumer.publisher import Publisher
from wa_consumer.settings import Settings

T = TypeVar("T")


def make_settings(amqp_url: str, sandbox_url: str, **overrides: Any) -> Settings:
    """Settings whose every broker name is unique to one test."""
    tag = uuid.uuid4().hex[:8]
    values: dict[str, Any] = {
        "amqp_url": amqp_url,
        "exchange": f"wx-{tag}",
        "dead_letter_exchange": f"dlx-{tag}",
        "queue": f"main-{tag}",
        "dead_letter_queue": f"failed-{tag}",
        "retry_queue_prefix": f"retry-{tag}-",
        "webhook_exchange": f"whx-{tag}",
        "webhook_queue": f"webhooks-{tag}",
        "webhook_failed_queue": f"webhooks-failed-{tag}",
        "inbound_messages_queue": f"inbound-{tag}",
        "graph_api_url": sandbox_url,
        "tenant_service_url": sandbox_url,
        "retry_delays": [0.2, 0.4],
        "max_retries": 2,
        "rate_limit_min_delay": 0.2,
        "pair_limit_min_delay": 0.2,
        "http_timeout_seconds": 2.0,
        "prefetch": 50,
        "shutdown_grace_seconds": 5,
        "metrics_port": 0,
    }
    values.update(overrides)
    return Settings(**values)


async def wait_for(
    check: Callable[[], Awaitable[T]], *, timeout: float = 15.0, interval: float = 0.05
) -> T:
    """Poll ``check`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T = await check()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")
        await asyncio.sleep(interval)
        last = await check()
    return last


def text_message(
    tenant: str, to: str, body: str = "hello", *, internal_id: str | None = None, **meta: Any
) -> dict[str, Any]:
    return {
        "metadata": {"tenantId": tenant, "internalId": internal_id or str(uuid.uuid4()), **meta},
        "wabaPayload": {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": to,
            "type": "text",
            "text": {"body": body},
        },
    }


class Broker:
    """A test's view of the broker: publish like a producer, read queues like an operator."""

    def __init__(self, connection: AbstractConnection, settings: Settings) -> None:
        self.connection = connection
        self.settings = settings
        self.publisher = Publisher(
            connection, exchange=settings.exchange, routing_key_prefix=settings.routing_key_prefix
        )

    async def publish(self, message: dict[str, Any]) -> None:
        await self.publisher.publish(message)

    async def publish_raw(self, body: bytes, tenant: str = "acme", **props: Any) -> None:
        """Publish bytes as a producer would, without validation (poison input)."""
        channel = await self.connection.channel(publisher_confirms=True)
        try:
            exchange = await channel.get_exchange(self.settings.exchange)
            await exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, **props),
                routing_key=f"{self.settings.routing_key_prefix}.{tenant}",
                mandatory=True,
            )
        finally:
            await channel.close()

    async def count(self, queue: str) -> int:
        channel = await self.connection.channel()
        try:
            q = await channel.declare_queue(queue, passive=True)
            return q.declaration_result.message_count or 0
        finally:
            await channel.close()

    async def drain(self, queue: str) -> list[AbstractIncomingMessage]:
        """Take every message now in ``queue`` (acked: the test owns them)."""
        channel = await self.connection.channel()
        out: list[AbstractIncomingMessage] = []
        try:
            q = await channel.declare_queue(queue, passive=True)
            while (msg := await q.get(fail=False, no_ack=True)) is not None:
                out.append(msg)
        finally:
            await channel.close()
        return out

    async def dead(self, expected: int, timeout: float = 15.0) -> list[AbstractIncomingMessage]:
        """Wait until the DLQ holds ``expected`` messages, then take them."""
        await wait_for(
            lambda: _ge(self.count(self.settings.dead_letter_queue), expected), timeout=timeout
        )
        return await self.drain(self.settings.dead_letter_queue)


async def _ge(value: Awaitable[int], expected: int) -> bool:
    return (await value) >= expected


def body_of(message: AbstractIncomingMessage) -> Any:
    return orjson.loads(message.body)


@asynccontextmanager
async def running(settings: Settings, **kwargs: Any) -> AsyncIterator[Daemon]:
    """A daemon running in this event loop until the block ends (graceful stop)."""
    daemon = Daemon(settings, **kwargs)
    task = asyncio.create_task(daemon.run())
    waiter = asyncio.create_task(daemon.consuming.wait())
    done, _ = await asyncio.wait([task, waiter], timeout=15, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        waiter.cancel()
        task.result()  # raises what made start-up fail
    assert waiter in done, "daemon did not start consuming"
    try:
        yield daemon
    finally:
        daemon.request_stop()
        assert await asyncio.wait_for(task, 30) == 0


@asynccontextmanager
async def broker_for(settings: Settings) -> AsyncIterator[Broker]:
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        yield Broker(connection, settings)
    finally:
        await connection.close()
