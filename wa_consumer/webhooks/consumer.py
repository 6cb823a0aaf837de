"""The status consumer (SPEC §13): ``inbound-webhooks`` into the ledger, in batches.

For each batch of webhook bodies: customers' messages are forwarded to ``inbound-messages``
(confirmed), the statuses of all of them are merged and applied in one statement, then each
body is acked. Nothing is acked before its statuses are written and its messages confirmed:
while the ledger is away, the batch is tried again and the rest wait in the queue (prefetch
bounds what this process holds). Applying is idempotent, so a body seen twice (a broker cut
took its ack) changes nothing. A body that is no webhook goes to ``inbound-webhooks-failed``
with its reason; a row the database refuses is found by halving and only its body goes there.
"""

from __future__ import annotations

import asyncio
from contextlib import suppress
from dataclasses import dataclass
from typing import Protocol

import aio_pika
import aiormq
import asyncpg
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aiormq.exceptions import ChannelInvalidStateError

from ..ledger.heartbeat import OUTAGE
from ..ledger.statuses import Applied
from ..logs import get_logger
from ..seams import StatusStore
from ..settings import Settings
from .payload import UnreadableWebhook, Webhook, merge, read

log = get_logger("statuses")

_BROKER_ERRORS = (aiormq.exceptions.AMQPError, ConnectionError, ChannelInvalidStateError)
#: A row the database refuses: that body's own problem, found by halving the batch.
_DATA = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)
_MAX_BATCH = 1000
_CONFIRM_TIMEOUT = 10.0


class StatusObserver(Protocol):
    def applied(self, row: Applied) -> None:
        """A wamid's row after a batch (``row.changed``: a transition)."""

    def inbound(self, count: int, *, forwarded: bool) -> None:
        """Customers' messages forwarded, or dropped by setting."""

    def unreadable(self) -> None:
        """A body sent to the failed queue."""


@dataclass(slots=True)
class _Body:
    message: AbstractIncomingMessage
    webhook: Webhook


class StatusConsumer:
    """Reads ``inbound-webhooks`` until closed; one batch at a time, in delivery order."""

    def __init__(
        self,
        connection: AbstractRobustConnection,
        settings: Settings,
        store: StatusStore,
        observer: StatusObserver,
    ) -> None:
        self._connection = connection
        self._settings = settings
        self._store = store
        self._observer = observer
        self._inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        self._channels: list[AbstractChannel] = []
        self._exchange: AbstractExchange | None = None
        self._dlx: AbstractExchange | None = None
        self._worker: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.batches = 0  # written batches, for tests and the bench

    async def start(self) -> None:
        s = self._settings
        consume = await self._connection.channel()
        await consume.set_qos(prefetch_count=s.statuses_prefetch)
        publish = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        self._channels = [consume, publish]
        self._exchange = await publish.get_exchange(s.webhook_exchange, ensure=True)
        self._dlx = await publish.get_exchange(s.dead_letter_exchange, ensure=True)
        self._queue = await consume.declare_queue(s.webhook_queue, passive=True)
        self._worker = asyncio.create_task(self._run(), name="status-consumer")
        self._tag = await self._queue.consume(self._inbox.put, no_ack=False)
        log.info("consuming_statuses", queue=s.webhook_queue, prefetch=s.statuses_prefetch)

    async def close(self, grace: float = 5.0) -> None:
        """Stop taking bodies, finish the batch in hand (up to ``grace``), hand back the rest."""
        self._stopping.set()
        if self._queue is not None and self._tag is not None:
            with suppress(*_BROKER_ERRORS, TimeoutError):
                await asyncio.wait_for(self._queue.cancel(self._tag), 5)
        if self._worker is not None:
            done, _ = await asyncio.wait([self._worker], timeout=grace)
            if not done:
                self._worker.cancel()
                await asyncio.wait([self._worker], timeout=1)
        for channel in self._channels:  # what was not acked goes back to the queue
            with suppress(*_BROKER_ERRORS, TimeoutError):
                await asyncio.wait_for(channel.close(), 5)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            batch = await self._next_batch()
            if not batch:
                continue
            try:
                await self._handle(batch)
            except Exception:  # a bug: said so; the bodies go back and the consumer goes on
                log.exception("statuses_batch_failed", bodies=len(batch))
                for message in batch:  # those already settled say so, and are left alone
                    with suppress(*_BROKER_ERRORS, aio_pika.exceptions.MessageProcessError):
                        await message.nack(requeue=True)
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 1.0)

    async def _next_batch(self) -> list[AbstractIncomingMessage]:
        """What came within the batch window after the first body, up to the batch size."""
        first = await self._take(None)
        if first is None:
            return []
        batch = [first]
        loop = asyncio.get_running_loop()
        window = loop.time() + self._settings.statuses_batch_seconds
        # No more can come than the prefetch: a batch that holds it is closed at once.
        most = min(_MAX_BATCH, self._settings.statuses_prefetch)
        while len(batch) < most:
            if not self._inbox.empty():
                batch.append(self._inbox.get_nowait())
                continue
            left = window - loop.time()
            taken = await self._take(left) if left > 0 else None
            if taken is None:
                break
            batch.append(taken)
        return batch

    async def _take(self, within: float | None) -> AbstractIncomingMessage | None:
        """The next body, or None after ``within`` seconds or when stopping. Never drops one that
        arrived as the wait ended (``wait_for`` on a queue's ``get`` can, before 3.12)."""
        getter = asyncio.ensure_future(self._inbox.get())
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait([getter, stop], timeout=within, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            getter.cancel()
            await asyncio.wait([getter])
        return None if getter.cancelled() else getter.result()

    async def _handle(self, batch: list[AbstractIncomingMessage]) -> None:
        bodies: list[_Body] = []
        for message in batch:
            try:
                bodies.append(_Body(message, read(message.body)))
            except UnreadableWebhook as exc:
                await self._dead(message, str(exc))
        bodies = [b for b in bodies if await self._forward(b)]
        await self._write(bodies)
        self.batches += 1

    async def _write(self, bodies: list[_Body]) -> None:
        """Apply the statuses of ``bodies`` and ack them; the ledger away: try again."""
        if not bodies:
            return
        updates = merge([u for b in bodies for u in b.webhook.statuses])
        delay = 0.5
        while True:
            try:
                applied = await self._store.apply(updates)
                break
            except _DATA as exc:
                if len(bodies) == 1:
                    await self._dead(bodies[0].message, f"the ledger refused a status: {exc}")
                    return
                half = len(bodies) // 2
                await self._write(bodies[:half])
                await self._write(bodies[half:])
                return
            except OUTAGE as exc:
                if self._stopping.is_set():
                    return  # not acked: the bodies go back to the queue
                log.warning("statuses_waiting_for_ledger", error=f"{type(exc).__name__}"[:100])
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                delay = min(delay * 2, 5.0)
        for row in applied:
            self._observer.applied(row)
        skipped = sum(b.webhook.skipped for b in bodies)
        if skipped:
            log.warning("statuses_skipped", count=skipped, reason="unreadable")
        # One frame for the batch: every earlier delivery is settled by now (bodies are
        # handled in delivery order, and those set aside were acked or nacked on the way).
        await _ack(bodies[-1].message, multiple=True)

    async def _forward(self, body: _Body) -> bool:
        """Customers' messages to ``inbound-messages``; False: not confirmed, try again later."""
        inbound = body.webhook.inbound
        if not inbound:
            return True
        if not self._settings.inbound_messages:
            for item in inbound:
                self._observer.inbound(item.count, forwarded=False)
            return True
        assert self._exchange is not None
        prefix = self._settings.inbound_routing_key
        try:
            for item in inbound:
                await self._exchange.publish(
                    aio_pika.Message(
                        item.body,
                        content_type="application/json",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key=f"{prefix}.{item.phone_number_id}",
                    mandatory=True,
                    timeout=_CONFIRM_TIMEOUT,
                )
        except (*_BROKER_ERRORS, TimeoutError) as exc:
            log.warning("inbound_not_forwarded", error=f"{type(exc).__name__}: {exc}"[:300])
            with suppress(*_BROKER_ERRORS):
                await body.message.nack(requeue=True)
            return False
        for item in inbound:
            self._observer.inbound(item.count, forwarded=True)
        return True

    async def _dead(self, message: AbstractIncomingMessage, reason: str) -> None:
        """To the failed queue with its reason; if that is not confirmed, the broker's own
        dead-lettering takes it there (without the reason)."""
        log.error("webhook_unreadable", reason=reason[:300], size=len(message.body))
        self._observer.unreadable()
        assert self._dlx is not None
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
        except (*_BROKER_ERRORS, TimeoutError):
            with suppress(*_BROKER_ERRORS):
                await message.nack(requeue=False)
            return
        await _ack(message)


async def _ack(message: AbstractIncomingMessage, *, multiple: bool = False) -> None:
    # A cut channel takes its acks with it; the body comes back and changes nothing twice.
    with suppress(*_BROKER_ERRORS):
        await message.ack(multiple=multiple)
