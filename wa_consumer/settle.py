"""The only module that acks, nacks or republishes.

The invariant lives here: a message is acked only after its next home (the Cloud API, a wait
queue, the dead-letter queue) has confirmed it. Every republish is ``mandatory`` with a
publisher confirm; a retry whose copy was not confirmed goes back to its queue (nack with
requeue), a death whose copy was not confirmed is dead-lettered by the broker itself
(nack without requeue, through the queue's dead-letter arguments).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from enum import Enum, StrEnum
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractExchange
from aiormq.exceptions import ChannelInvalidStateError

from . import headers as h
from .acks import AckCoalescer
from .delivery import Delivery
from .logs import get_logger
from .outcomes import (
    Dead,
    Delivered,
    Duplicate,
    Failure,
    HandBack,
    Held,
    Outcome,
    Recount,
    Retry,
)
from .seams import RecordOutcome

log = get_logger("settle")

#: ``record(copied, headers)``: the ledger's write, between the copy's publish and the ack.
Record = RecordOutcome


class _Published(Enum):
    CONFIRMED = 1
    REFUSED = 2  # nacked or returned by the broker
    UNAVAILABLE = 3  # the channel or connection is away, or no answer in time


def _lost(exc: BaseException) -> Settled:
    # The consuming channel is gone: nothing was acked, the broker redelivers.
    log.warning("settle_failed", error=type(exc).__name__, detail=str(exc)[:200])
    return Settled.LOST_CHANNEL


class Settled(StrEnum):
    """What actually happened to the delivery (for logs and metrics)."""

    ACKED = "acked"
    RETRIED = "retried"
    HELD = "held"  # in its paused tenant's held queue (SPEC §14)
    DEAD = "dead"
    DEAD_BY_BROKER = "dead_by_broker"  # DLQ copy unconfirmed: nack(requeue=False)
    HANDED_BACK = "handed_back"  # a confirmed copy waits at the tail of the main queue
    REQUEUED = "requeued"  # the copy was not confirmed: nack(requeue=True)
    LOST_CHANNEL = "lost_channel"  # the channel died first: the broker redelivers it
    FAILED = "failed"  # a fault of ours while settling: nacked back to its queue


# What a broker or channel failure raises; anything else is a bug and is not taken for one.
_BROKER_ERRORS = (aiormq.exceptions.AMQPError, ConnectionError, ChannelInvalidStateError)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Settler:
    """Carries out an ``Outcome`` for one delivery, holding the never-ack-first invariant."""

    def __init__(
        self,
        channel: AbstractChannel,
        dead_letter_exchange: AbstractExchange,
        *,
        main_queue: str,
        dead_routing_key: str,
        error_text_bytes: int = 1024,
        confirm_timeout: float = 10.0,
        requeue_backoff: float = 1.0,
    ) -> None:
        self._channel = channel
        self._dlx = dead_letter_exchange
        self._main_queue = main_queue
        self._dead_key = dead_routing_key
        self._error_bytes = error_text_bytes
        self._confirm_timeout = confirm_timeout
        self._requeue_backoff = requeue_backoff
        self.acks = AckCoalescer()

    def delivered(self, delivery: Delivery) -> None:
        """Register a delivery, in delivery order, before anything awaits (see ``acks``)."""
        self.acks.delivered(delivery)

    async def flush(self) -> None:
        await self.acks.drain()

    async def settle(
        self, delivery: Delivery, outcome: Outcome, *, tenant_id: str | None, record: Record
    ) -> Settled:
        """Carry out ``outcome``; never raises (the broker keeps what was not acked).

        ``record(copied, headers)`` is awaited once, after the copy's publish (``copied``:
        confirmed; ``headers``: the copy's) and before the ack: the ledger then knows whether a
        dead message's copy is in the DLQ, and what it carries.
        """
        if isinstance(outcome, Delivered | Duplicate):
            await record(True)
            return self._ack(delivery, Settled.ACKED)
        try:
            exchange, key, copy, moved = self._plan(delivery, outcome, tenant_id)
        except Exception:  # a bug: logged as one; the message goes back rather than hang
            log.exception("settle_error", outcome=type(outcome).__name__)
            await record(False)
            await asyncio.sleep(self._requeue_backoff)  # not straight back into the same fault
            return self._nack(delivery, requeue=True, settled=Settled.FAILED)
        published = await self._publish(exchange, key, copy)
        await record(published is _Published.CONFIRMED, copy.headers)
        if published is _Published.CONFIRMED:
            return self._ack(delivery, moved)
        # A death is dead-lettered by the queue's own arguments, unless the broker could not
        # take its headers: then it waits its turn again, like a retry.
        dead = moved is Settled.DEAD and h.broker_can_dead_letter(delivery.headers)
        if not dead and (
            published is _Published.UNAVAILABLE or moved in (Settled.DEAD, Settled.HELD)
        ):
            # The publishing channel is away (a broker cut, a reconnect), a death goes back, or
            # a held queue is gone (its pause just ended): a requeue now would come straight
            # back and fail again. Hold it a moment instead.
            await asyncio.sleep(self._requeue_backoff)
        settled = Settled.DEAD_BY_BROKER if dead else Settled.REQUEUED
        return self._nack(delivery, requeue=not dead, settled=settled)

    def _plan(
        self, delivery: Delivery, outcome: Outcome, tenant_id: str | None
    ) -> tuple[AbstractExchange, str, aio_pika.Message, Settled]:
        """Where the copy goes: (exchange, routing key, the copy, what it becomes)."""
        default = self._channel.default_exchange
        if isinstance(outcome, HandBack | Recount):
            # A copy at the tail of the main queue, so that a graceful hand-back is not
            # mistaken for a crash on redelivery; a recount carries the delivery count.
            headers = h.carry(delivery.headers)
            if isinstance(outcome, Recount):
                headers[h.DELIVERIES] = outcome.deliveries
            return default, self._main_queue, self._message(delivery, headers), Settled.HANDED_BACK
        if isinstance(outcome, Held):
            # Unchanged: a held message is no failure, and comes back as it was published.
            copy = self._message(delivery, h.carry(delivery.headers))
            return default, outcome.queue, copy, Settled.HELD
        if isinstance(outcome, Retry):
            copy = self._copy(delivery, outcome.failure, tenant_id, retry=outcome.counts)
            return default, outcome.queue, copy, Settled.RETRIED
        if isinstance(outcome, Dead):
            copy = self._copy(delivery, outcome.failure, tenant_id, retry=False)
            return self._dlx, self._dead_key, copy, Settled.DEAD
        raise AssertionError(f"unknown outcome {outcome!r}")  # pragma: no cover

    def _ack(self, delivery: Delivery, settled: Settled) -> Settled:
        try:
            self.acks.ack(delivery)
        except _BROKER_ERRORS as exc:
            return _lost(exc)
        return settled

    def _nack(self, delivery: Delivery, *, requeue: bool, settled: Settled) -> Settled:
        try:
            self.acks.nack(delivery, requeue=requeue)
        except _BROKER_ERRORS as exc:
            return _lost(exc)
        return settled

    async def _publish(
        self, exchange: AbstractExchange, key: str, message: aio_pika.Message
    ) -> _Published:
        try:
            confirmation = await exchange.publish(
                message, routing_key=key, mandatory=True, timeout=self._confirm_timeout
            )
        except (*_BROKER_ERRORS, TimeoutError) as exc:
            log.warning("republish_unconfirmed", routing_key=key, error=type(exc).__name__)
            refused = isinstance(exc, aiormq.exceptions.DeliveryError)  # nacked or returned
            return _Published.REFUSED if refused else _Published.UNAVAILABLE
        except Exception:  # a bug, not a broker answer: said so, and nothing is acked
            log.exception("republish_error", routing_key=key)
            return _Published.REFUSED
        if isinstance(confirmation, aiormq.spec.Basic.Ack):
            return _Published.CONFIRMED
        return _Published.REFUSED

    def _copy(
        self,
        delivery: Delivery,
        failure: Failure,
        tenant_id: str | None,
        *,
        retry: bool,
    ) -> aio_pika.Message:
        old = delivery.headers or {}
        headers = h.carry(old)
        headers.pop(h.DELIVERIES, None)  # a settled attempt resets the crash-loop count
        failed_at = now_iso()
        retries = h.count_or_zero(old, h.RETRY_COUNT)  # a bad one is dead already: invalid
        headers[h.RETRY_COUNT] = retries + 1 if retry else retries
        headers[h.ERROR_CATEGORY] = str(failure.category)
        headers[h.ERROR_CODE] = h.text(str(failure.code), 64)
        if failure.subcode is not None and -(2**31) <= failure.subcode < 2**31:
            headers[h.ERROR_SUBCODE] = failure.subcode
        else:
            headers.pop(h.ERROR_SUBCODE, None)
        headers[h.ERROR_MESSAGE] = h.text(failure.message, self._error_bytes)
        first = headers.get(h.FIRST_FAILED)
        headers[h.FIRST_FAILED] = h.text(first, 64) if isinstance(first, str) else failed_at
        headers[h.FAILED_AT] = failed_at
        original = headers.get(h.ORIGINAL_KEY)
        original = original if isinstance(original, str) else delivery.routing_key or ""
        headers[h.ORIGINAL_KEY] = h.text(original)
        if tenant_id is not None:
            headers[h.TENANT] = h.text(tenant_id)
        return self._message(delivery, headers)

    @staticmethod
    def _message(delivery: Delivery, headers: dict[str, Any]) -> aio_pika.Message:
        return aio_pika.Message(
            delivery.body,
            headers=headers,
            content_type=delivery.content_type or "application/json",
            content_encoding=delivery.content_encoding,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            priority=delivery.priority,
            correlation_id=delivery.correlation_id,
            message_id=delivery.message_id,
            timestamp=delivery.timestamp,
            type=delivery.type,
            app_id=delivery.app_id,
        )
