"""Where the status consumer publishes: customers' messages to ``inbound-messages``, and
bodies it cannot use to ``inbound-webhooks-failed`` with their reason. Every publish is
persistent, ``mandatory`` and confirmed before the body it came from is acked."""

from __future__ import annotations

import asyncio
from contextlib import suppress
from typing import Final

import aio_pika
import aiormq
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage
from aiormq.exceptions import ChannelInvalidStateError
from pamqp.common import FieldValue

from ..logs import get_logger
from ..settings import Settings
from .payload import Inbound

log = get_logger("statuses")

BROKER_ERRORS: Final = (aiormq.exceptions.AMQPError, ConnectionError, ChannelInvalidStateError)
_CONFIRM_TIMEOUT: Final = 10.0


class Forwarder:
    """Publishes with confirms on the status consumer's own channel."""

    def __init__(
        self,
        settings: Settings,
        exchange: AbstractExchange,
        dlx: AbstractExchange,
        stopping: asyncio.Event,
    ) -> None:
        self._settings = settings
        self._exchange = exchange
        self._dlx = dlx
        self._stopping = stopping

    async def forward(self, inbound: list[Inbound]) -> bool:
        """Confirmed in ``inbound-messages``; False only when stopping first. While the broker
        refuses (an unbound queue, no confirm), it is tried again with a growing pause: the
        body is kept, not requeued at once (a spin, and a quorum queue's delivery limit)."""
        delay = 0.5
        while True:
            try:
                for item in inbound:
                    await self._publish(item)
                return True
            except (*BROKER_ERRORS, TimeoutError) as exc:
                if delay == 0.5 or delay >= 5.0:  # the first failure, then every ~5 s
                    log.warning("inbound_not_forwarded", error=f"{type(exc).__name__}: {exc}"[:300])
            with suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            if self._stopping.is_set():
                return False
            delay = min(delay * 2, 5.0)

    async def _publish(self, item: Inbound) -> None:
        headers: dict[str, FieldValue] = {"x-phone-number-id": item.phone_number_id}
        if item.waba_id is not None:
            headers["x-waba-id"] = item.waba_id
        message = aio_pika.Message(
            item.body,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=item.first_id,  # Meta sends again: the application can tell a repeat
            headers=headers,
        )
        await self._exchange.publish(
            message,
            routing_key=f"{self._settings.inbound_routing_key}.{item.phone_number_id}",
            mandatory=True,
            timeout=_CONFIRM_TIMEOUT,
        )

    async def dead(self, message: AbstractIncomingMessage, reason: str) -> None:
        """To the failed queue with its reason, then acked; if that is not confirmed, the
        broker's own dead-lettering takes it there (without the reason)."""
        log.error("webhook_unreadable", reason=reason[:300], size=len(message.body))
        copy = aio_pika.Message(
            message.body,
            content_type=message.content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers={"x-error-category": "invalid", "x-error-message": reason[:1024]},
        )
        try:
            await self._dlx.publish(
                copy,
                routing_key=f"{self._settings.webhook_routing_key}.failed",
                mandatory=True,
                timeout=_CONFIRM_TIMEOUT,
            )
        except (*BROKER_ERRORS, TimeoutError):
            with suppress(*BROKER_ERRORS):
                await message.nack(requeue=False)
            return
        with suppress(*BROKER_ERRORS):
            await message.ack()
