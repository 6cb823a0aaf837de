"""Publish outbound messages the way the daemon expects them (SPEC §2, §3).

Each message is validated with the daemon's own models before it leaves, published
persistent and ``mandatory`` to ``whatsapp-exchange`` with routing key
``outbound.processed.<tenantId>`` and ``message_id`` = ``internalId``, and a publisher
confirm is awaited: an unroutable or refused message raises ``PublishError``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq
import orjson
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange

from .errors import WaConsumerError
from .message import Outbound, parse


class PublishError(WaConsumerError):
    """The broker did not take the message (unroutable, refused, or unreachable)."""


class Publisher:
    """An async publisher over one channel with publisher confirms."""

    def __init__(
        self,
        connection: AbstractConnection,
        *,
        exchange: str = "whatsapp-exchange",
        routing_key_prefix: str = "outbound.processed",
        confirm_timeout: float = 10.0,
    ) -> None:
        self._connection = connection
        self._exchange_name = exchange
        self._prefix = routing_key_prefix
        self._timeout = confirm_timeout
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None

    async def _ready(self) -> AbstractExchange:
        if self._exchange is None:
            self._channel = await self._connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
            self._exchange = await self._channel.get_exchange(self._exchange_name, ensure=True)
        return self._exchange

    async def publish(
        self, message: dict[str, Any] | bytes, *, headers: dict[str, Any] | None = None
    ) -> Outbound:
        """Validate and publish one message; returns what was validated.

        Raises ``InvalidMessage`` before publishing, ``PublishError`` when not confirmed.
        """
        body = message if isinstance(message, bytes) else orjson.dumps(message)
        outbound = parse(body)
        exchange = await self._ready()
        amqp = aio_pika.Message(
            body,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=outbound.internal_id,
            timestamp=datetime.now(UTC),
            headers=headers or {},
        )
        key = f"{self._prefix}.{outbound.tenant_id}"
        try:
            confirmation = await exchange.publish(
                amqp, routing_key=key, mandatory=True, timeout=self._timeout
            )
        except aiormq.exceptions.DeliveryError as exc:
            raise PublishError(
                f"message {outbound.internal_id!r} was not routed ({key!r}): is the topology "
                f"declared? (wa-consumer topology declare)"
            ) from exc
        except (aiormq.exceptions.AMQPError, ConnectionError, TimeoutError) as exc:
            raise PublishError(f"message {outbound.internal_id!r} not confirmed: {exc}") from exc
        if not isinstance(confirmation, aiormq.spec.Basic.Ack):
            raise PublishError(f"message {outbound.internal_id!r} refused by the broker")
        return outbound

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._exchange = None
