"""Publish outbound WhatsApp messages for wa-consumer to deliver (SPEC §2, §3).

::

    import asyncio

    from wa_consumer.publisher import Publisher, text_message

    async def main() -> None:
        async with Publisher.connect("amqp://guest:guest@localhost:5672/") as publisher:
            # Validated, published, confirmed by the broker; returns the internalId.
            internal_id = await publisher.send_text("acme", "27821234567", "Your order is ready")
            await publisher.send_template("acme", "27821234567", "order_ready", "en_US")
            await publisher.send_media(
                "acme", "27821234567", "document",
                link="https://example.com/invoice.pdf", filename="invoice.pdf",
            )
            # Many at once: confirms awaited together, one result per message, in order.
            results = await publisher.publish_many(
                text_message("acme", number, "The sale starts now")
                for number in ("27821234567", "27829876543")
            )
            for result in results:
                if not result.ok:
                    print(result.internal_id, result.error)

    asyncio.run(main())

Every message is validated with the daemon's own models first (``InvalidMessage``, nothing
published), then published persistent and ``mandatory`` to ``whatsapp-exchange`` with routing
key ``outbound.processed.<tenantId>`` and ``message_id`` = ``internalId``, and the broker's
confirm is awaited. Errors::

    PublishError        the broker did not take the message
    ├── Unroutable      no queue is bound for the routing key (topology not declared?)
    ├── Refused         the broker nacked it: it is not queued; publish it again later
    └── NotConfirmed    no confirm in time, or the connection was lost: it may or may not be
                        queued; publishing it again with the same internalId is safe, the
                        daemon sends one internalId once

``publish_many`` raises none of these: it returns a ``PublishResult`` per message.

When the publishing process uses OpenTelemetry and a span is current, its W3C
``traceparent`` (and ``tracestate``) go into the message's headers, unless the caller set its
own: the daemon's ``wa.deliver`` span (``WA_OTEL_ENABLED``) continues that trace.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import aio_pika
import aiormq
import orjson
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractRobustChannel,
)
from yarl import URL

from . import tracing
from .builders import MediaKind, media_message, template_message, text_message
from .errors import InvalidMessage, WaConsumerError
from .message import Outbound, OutboundMessage, parse

__all__ = [
    "MediaKind",
    "NotConfirmed",
    "PublishError",
    "PublishResult",
    "Publisher",
    "Refused",
    "Unroutable",
    "media_message",
    "template_message",
    "text_message",
]


Message = Mapping[str, Any] | bytes | OutboundMessage
"""What ``publish`` takes: the JSON document as a dict, as bytes, or as the model."""

# What aio-pika and aiormq raise when the connection or channel goes away under a publish;
# RuntimeError too: aiormq raises a bare one for a channel asked of a closed connection.
_TRANSPORT_ERRORS = (aiormq.exceptions.AMQPError, ConnectionError, OSError, RuntimeError)


class PublishError(WaConsumerError):
    """The broker did not take the message (or could not be reached)."""

    def __init__(self, message: str, *, internal_id: str | None = None) -> None:
        self.internal_id = internal_id
        super().__init__(message)


class Unroutable(PublishError):
    """No queue is bound for the routing key: the message was returned, not queued."""


class Refused(PublishError):
    """The broker nacked the message: it is not queued."""


class NotConfirmed(PublishError):
    """No confirm came: it may or may not be queued; publishing it again is safe."""


@dataclass(frozen=True, slots=True)
class PublishResult:
    """The fate of one message of ``publish_many``."""

    internal_id: str | None
    """None only for a message too broken to read its id from."""
    error: Exception | None = None
    """``InvalidMessage``, a ``PublishError``, or None when it was confirmed."""

    @property
    def ok(self) -> bool:
        return self.error is None


class Publisher:
    """Validates and publishes messages over one channel with publisher confirms.

    Give it a connection you own (``Publisher(connection)``; ``close`` leaves the connection
    open), or let it own one (``Publisher.connect(url)``; ``close`` closes it too).
    """

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
        self._opening = asyncio.Lock()
        self._owns_connection = False

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        exchange: str = "whatsapp-exchange",
        routing_key_prefix: str = "outbound.processed",
        confirm_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        reconnect_interval: float = 1.0,
    ) -> _Connecting:
        """A publisher on a connection of its own; ``await`` it or use ``async with``.

        The connection is robust: after a network failure it reconnects by itself. Messages
        in flight at the failure raise ``NotConfirmed``; later ones wait for the reconnection
        up to ``confirm_timeout``.
        """

        async def open_() -> Publisher:
            try:
                connection = await aio_pika.connect_robust(
                    url, timeout=connect_timeout, reconnect_interval=reconnect_interval
                )
            except (*_TRANSPORT_ERRORS, TimeoutError) as exc:
                where = URL(url).with_user(None)  # never print the password
                raise PublishError(f"cannot connect to RabbitMQ at {where}: {exc}") from exc
            publisher = cls(
                connection,
                exchange=exchange,
                routing_key_prefix=routing_key_prefix,
                confirm_timeout=confirm_timeout,
            )
            publisher._owns_connection = True
            return publisher

        return _Connecting(open_)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel, and the connection if this publisher opened it."""
        channel, self._channel, self._exchange = self._channel, None, None
        try:
            if channel is not None and not channel.is_closed:
                await channel.close()
        finally:
            if self._owns_connection:
                await self._connection.close()

    # -- one message ---------------------------------------------------------------------

    async def publish(self, message: Message, *, headers: dict[str, Any] | None = None) -> Outbound:
        """Validate and publish one message, and wait for the broker's confirm.

        Returns what was validated. Raises ``InvalidMessage`` before publishing anything,
        and a ``PublishError`` when the broker did not confirm the message as queued.
        """
        body = _body(message)
        outbound = parse(body)
        await self._publish(body, outbound.internal_id, outbound.tenant_id, headers)
        return outbound

    async def send_text(
        self,
        tenant_id: str,
        to: str,
        body: str,
        *,
        internal_id: str | None = None,
        phone_number_id: str | None = None,
        expires_at: datetime | str | None = None,
        preview_url: bool = False,
        reply_to: str | None = None,
        callback_data: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Publish a text message; returns its internalId."""
        message = text_message(
            tenant_id,
            to,
            body,
            internal_id=internal_id,
            phone_number_id=phone_number_id,
            expires_at=expires_at,
            preview_url=preview_url,
            reply_to=reply_to,
            callback_data=callback_data,
            metadata=metadata,
        )
        return (await self.publish(message)).internal_id

    async def send_template(
        self,
        tenant_id: str,
        to: str,
        name: str,
        language: str,
        components: Sequence[Mapping[str, Any]] | None = None,
        *,
        internal_id: str | None = None,
        phone_number_id: str | None = None,
        expires_at: datetime | str | None = None,
        reply_to: str | None = None,
        callback_data: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Publish a template message (``language`` is its code, e.g. ``en_US``)."""
        message = template_message(
            tenant_id,
            to,
            name,
            language,
            components,
            internal_id=internal_id,
            phone_number_id=phone_number_id,
            expires_at=expires_at,
            reply_to=reply_to,
            callback_data=callback_data,
            metadata=metadata,
        )
        return (await self.publish(message)).internal_id

    async def send_media(
        self,
        tenant_id: str,
        to: str,
        kind: MediaKind,
        *,
        media_id: str | None = None,
        link: str | None = None,
        caption: str | None = None,
        filename: str | None = None,
        internal_id: str | None = None,
        phone_number_id: str | None = None,
        expires_at: datetime | str | None = None,
        reply_to: str | None = None,
        callback_data: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Publish an image, video, audio, document or sticker, by ``media_id`` or ``link``."""
        message = media_message(
            tenant_id,
            to,
            kind,
            media_id=media_id,
            link=link,
            caption=caption,
            filename=filename,
            internal_id=internal_id,
            phone_number_id=phone_number_id,
            expires_at=expires_at,
            reply_to=reply_to,
            callback_data=callback_data,
            metadata=metadata,
        )
        return (await self.publish(message)).internal_id

    # -- many messages -------------------------------------------------------------------

    async def publish_many(
        self, messages: Iterable[Message], *, concurrency: int = 500
    ) -> list[PublishResult]:
        """Publish many messages with up to ``concurrency`` confirms in flight at once.

        One confirm round trip per message in turn would cap a batch at the broker's latency;
        overlapping them is what makes a batch fast. Returns one result per message, in
        order; an invalid or unconfirmed message is reported there, never dropped, and does
        not stop the others.
        """
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        gate = asyncio.Semaphore(concurrency)

        async def one(message: Message) -> PublishResult:
            try:
                body = _body(message)
                outbound = parse(body)
            except InvalidMessage as exc:
                return PublishResult(exc.internal_id, exc)
            try:
                async with gate:
                    await self._publish(body, outbound.internal_id, outbound.tenant_id, None)
            except PublishError as exc:
                return PublishResult(outbound.internal_id, exc)
            return PublishResult(outbound.internal_id)

        outcomes = await asyncio.gather(*(one(m) for m in messages), return_exceptions=True)
        results: list[PublishResult] = []
        for outcome in outcomes:
            if isinstance(outcome, PublishResult):
                results.append(outcome)
            elif isinstance(outcome, Exception):  # a bug, reported rather than lost
                results.append(PublishResult(None, outcome))
            else:  # cancelled: nothing more can be said of the batch
                raise outcome
        return results

    # -- the broker ----------------------------------------------------------------------

    async def _ready(self) -> AbstractExchange:
        """The exchange on an open channel.

        A robust channel comes back by itself after a network failure: wait for it (within
        the caller's deadline) rather than fail every message published meanwhile. A plain
        channel the broker closed is opened again.
        """
        channel, exchange = self._channel, self._exchange
        if channel is not None and exchange is not None:
            if isinstance(channel, AbstractRobustChannel):
                await channel.ready()
                return exchange
            if not channel.is_closed:
                return exchange
        async with self._opening:
            reopened = self._channel is not None and not self._channel.is_closed
            if reopened and self._exchange is not None:  # by another caller meanwhile
                return self._exchange
            self._channel = self._exchange = None
            channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
            try:
                exchange = await channel.get_exchange(self._exchange_name, ensure=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                # The broker closed it; closing our side too stops a robust one reopening.
                with contextlib.suppress(*_TRANSPORT_ERRORS):
                    await channel.close()
                raise Unroutable(
                    f"exchange {self._exchange_name!r} does not exist: the topology is likely "
                    f"not declared (wa-consumer topology declare)"
                ) from None
            self._channel, self._exchange = channel, exchange
            return exchange

    async def _publish(
        self, body: bytes, internal_id: str, tenant_id: str, headers: dict[str, Any] | None
    ) -> None:
        key = f"{self._prefix}.{tenant_id}"
        amqp = aio_pika.Message(
            body,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=internal_id,
            timestamp=datetime.now(UTC),
            headers=tracing.inject(headers or {}),  # the caller's trace, when it has one
        )
        try:
            # One deadline for all of it: a robust connection waits to reconnect unbounded.
            async with asyncio.timeout(self._timeout):
                exchange = await self._ready()
                confirmation = await exchange.publish(amqp, routing_key=key, mandatory=True)
        except aiormq.exceptions.PublishError as exc:  # basic.return: routed nowhere
            raise Unroutable(
                f"message {internal_id!r} is unroutable: no queue is bound to exchange "
                f"{self._exchange_name!r} for routing key {key!r}; the topology is likely "
                f"not declared (wa-consumer topology declare)",
                internal_id=internal_id,
            ) from exc
        except aiormq.exceptions.DeliveryError as exc:  # basic.nack
            raise Refused(
                f"message {internal_id!r} was refused by the broker (nack): it is not queued",
                internal_id=internal_id,
            ) from exc
        except TimeoutError as exc:
            raise NotConfirmed(
                f"message {internal_id!r} was not confirmed within {self._timeout}s: it may or "
                f"may not be queued; publishing it again with the same internalId is safe",
                internal_id=internal_id,
            ) from exc
        except _TRANSPORT_ERRORS as exc:
            raise NotConfirmed(
                f"message {internal_id!r} was not confirmed, the connection to RabbitMQ failed "
                f"({type(exc).__name__}: {exc}): it may or may not be queued; publishing it "
                f"again with the same internalId is safe",
                internal_id=internal_id,
            ) from exc
        if not isinstance(confirmation, aiormq.spec.Basic.Ack):
            raise Refused(
                f"message {internal_id!r} was not acknowledged by the broker ({confirmation!r})",
                internal_id=internal_id,
            )


class _Connecting:
    """What ``Publisher.connect`` returns: awaitable, or an async context manager."""

    def __init__(self, open_: Callable[[], Coroutine[Any, Any, Publisher]]) -> None:
        self._open = open_

    def __await__(self) -> Generator[Any, None, Publisher]:
        opened: Publisher = yield from self._open().__await__()
        return opened

    async def __aenter__(self) -> Publisher:
        self._publisher: Publisher = await self._open()
        return self._publisher

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._publisher.close()


# -- building messages -----------------------------------------------------------------------


def _body(message: Message) -> bytes:
    if isinstance(message, bytes):
        return message
    if isinstance(message, OutboundMessage):
        # Only what the caller set: a full dump would add every default to Meta's body.
        return orjson.dumps(message.model_dump(mode="json", exclude_unset=True))
    try:
        return orjson.dumps(message if isinstance(message, dict) else dict(message))
    except orjson.JSONEncodeError as exc:
        raise InvalidMessage(f"the message cannot be written as JSON: {exc}") from exc
