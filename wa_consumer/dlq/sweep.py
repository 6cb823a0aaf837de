"""One pass over the dead-letter queue: each message seen once, in order, in bounded memory.

How the pass keeps order without holding the queue: it counts the messages at the start
(passive declare), consumes with a bounded prefetch, and gives every message one of three
fates, decided a batch at a time:

- ``KEEP``: a copy (same body, headers and properties) is published to the *tail* of the
  same queue (default exchange, so only that queue gets it), then the original is acked.
  Kept messages move to the tail in their original order, so after exactly ``total``
  messages the queue holds them as before. A message that arrives during the pass lands
  among them, after the copies made before it arrived.
- ``Move``: a new message is published elsewhere (a replay to the main queue), then acked.
- ``DROP``: acked (a purge).

No ack is sent before the copy's positive confirm (``mandatory``, publisher confirms, returns
raise). A copy that is not confirmed leaves its original unacked, and the pass stops: closing
the channel gives it back to its place. The worst a crash can do is leave a copy *and* its
original (at-least-once), never neither.

The pass must stop after the ``total`` originals and never receive a copy it made itself.
The broker sends while fewer than ``window`` deliveries are unacked (``window`` = the
prefetch, or ``total`` if smaller), so at most ``acked + window`` are ever received. The pass
therefore holds back acks once ``total - window`` are acked: it can then receive the
remaining originals and nothing more; after the last one it cancels its consumer and acks
what it held. Memory is bounded by ``window`` deliveries whatever the queue's length.

Quorum queues may drop acks sent just before the channel closes (rabbitmq-server#10327: the
settles are low-priority Raft commands the channel's end can overtake), which would hand
back originals whose copies are already at the tail. With a quorum DLQ the pass therefore
waits ``settle_grace`` after its last acks before it closes the channel.

Why not ``basic.get`` and a nack-requeue at the end: every looked-at message would stay
unacked until then (unbounded memory and broker state for 100,000 messages), and on quorum
queues each requeue counts towards the delivery limit, past which a message is dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from ..errors import WaConsumerError


class DlqError(WaConsumerError):
    """A DLQ pass could not start or had to stop; nothing unconfirmed was acked."""


class _Keep:
    def __repr__(self) -> str:
        return "KEEP"


class _Drop:
    def __repr__(self) -> str:
        return "DROP"


KEEP: Final = _Keep()
DROP: Final = _Drop()


@dataclass(frozen=True, slots=True)
class Move:
    """Publish ``message`` through the default exchange to queue ``queue``, then ack."""

    message: aio_pika.Message
    queue: str


Action = _Keep | _Drop | Move
Decide = Callable[[Sequence[AbstractIncomingMessage], int], Awaitable[Sequence[Action]]]
Progress = Callable[[int, int], None]
#: Told of the messages whose ``Move`` was confirmed, before their acks (a replay marks them
#: replayed in the ledger then); if it raises, none of them is acked and the pass stops.
Moved = Callable[[Sequence[AbstractIncomingMessage]], Awaitable[None]]


QUORUM_SETTLE_GRACE = 1.0


@dataclass(frozen=True, slots=True)
class PassOptions:
    """How a pass talks to the broker."""

    prefetch: int = 200  # the window: deliveries in hand at most
    confirm_timeout: float = 10.0
    idle_timeout: float = 10.0  # no delivery for this long: someone else took the rest
    settle_grace: float = 0.0  # wait after the last acks (quorum queues, see above)

    @classmethod
    def for_queue_type(cls, queue_type: str) -> PassOptions:
        return cls(settle_grace=QUORUM_SETTLE_GRACE if queue_type == "quorum" else 0.0)


@dataclass(slots=True)
class PassReport:
    """How a pass went: ``seen`` is below ``total`` only if someone else took messages."""

    total: int = 0
    seen: int = 0
    acked: int = 0
    peak_in_hand: int = 0  # most deliveries unacked at once (never above the window)


class Pacer:
    """At most ``rate`` calls of ``wait`` per second (a replay must not be a load spike)."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate
        self._next = time.monotonic()

    async def wait(self) -> None:
        now = time.monotonic()
        if self._next > now:
            await asyncio.sleep(self._next - now)
        self._next = max(self._next, now) + self._interval


def copy_of(delivery: AbstractIncomingMessage) -> aio_pika.Message:
    """The delivery as a new message, with its body, headers and properties unchanged.

    Two exceptions, both forced on us: ``user_id`` is left out (the broker refuses one that
    is not the connection's own), and a message with no ``message_id`` gets one from the
    client library (aiormq sets one on every publish).
    """
    return aio_pika.Message(
        delivery.body,
        headers=dict(delivery.headers or {}),
        content_type=delivery.content_type,
        content_encoding=delivery.content_encoding,
        delivery_mode=delivery.delivery_mode or aio_pika.DeliveryMode.PERSISTENT,
        priority=delivery.priority,
        correlation_id=delivery.correlation_id,
        reply_to=delivery.reply_to,
        expiration=delivery.expiration,
        message_id=delivery.message_id,
        timestamp=delivery.timestamp,
        type=delivery.type,
        app_id=delivery.app_id,
    )


class DeadLetterPass:
    """One pass over ``queue``; ``decide`` is called per batch with the batch's first position."""

    def __init__(
        self,
        connection: AbstractConnection,
        queue: str,
        decide: Decide,
        *,
        options: PassOptions | None = None,
        pacer: Pacer | None = None,
        progress: Progress | None = None,
        moved: Moved | None = None,
    ) -> None:
        self._options = options = options or PassOptions()
        if options.prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        self._connection = connection
        self._queue = queue
        self._decide = decide
        self._pacer = pacer
        self._progress = progress or (lambda done, total: None)
        self._moved = moved
        self.report = PassReport()
        self._window = options.prefetch
        self._held: list[AbstractIncomingMessage] = []
        self._cancelled = False

    async def run(self) -> PassReport:
        channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        try:
            await self._run(channel)
        except (aiormq.exceptions.AMQPError, ConnectionError) as exc:
            raise DlqError(f"the pass over {self._queue!r} stopped: {exc}") from exc
        finally:
            if not channel.is_closed:
                await channel.close()
        return self.report

    async def _run(self, channel: AbstractChannel) -> None:
        try:
            queue = await channel.declare_queue(self._queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            raise DlqError(
                f"queue {self._queue!r} does not exist (wa-consumer topology declare)"
            ) from None
        declared = queue.declaration_result
        if declared.consumer_count:
            raise DlqError(
                f"queue {self._queue!r} has {declared.consumer_count} consumer(s); a DLQ "
                "command needs it alone (is another one running?)"
            )
        total = self.report.total = declared.message_count or 0
        if total == 0:
            return
        self._window = min(self._options.prefetch, total)
        await channel.set_qos(prefetch_count=self._window)
        inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()

        async def receive(delivery: AbstractIncomingMessage) -> None:
            inbox.put_nowait(delivery)

        try:
            tag = await queue.consume(receive, exclusive=True)
        except aiormq.exceptions.ChannelAccessRefused:
            raise DlqError(f"queue {self._queue!r} is in use by another consumer") from None
        try:
            while self.report.seen < total:
                try:
                    first = await asyncio.wait_for(inbox.get(), self._options.idle_timeout)
                except TimeoutError:
                    break  # someone else took the rest; what was seen is settled
                batch = [first]
                while not inbox.empty():
                    batch.append(inbox.get_nowait())
                position = self.report.seen + 1
                self.report.seen += len(batch)
                in_hand = self.report.seen - self.report.acked
                self.report.peak_in_hand = max(self.report.peak_in_hand, in_hand)
                if self.report.seen >= total:
                    await self._stop(queue, tag)
                actions = await self._decide(batch, position)
                await self._settle(channel, batch, actions)
                self._progress(self.report.seen, total)
        finally:
            # Copies of the held ones are confirmed: ack them once no more can arrive. With
            # the channel gone there is nothing to ack: the broker has them back already.
            if not channel.is_closed:
                await self._stop(queue, tag)
                for delivery in self._held:
                    await self._ack(delivery)
                if self.report.acked and self._options.settle_grace:
                    await asyncio.sleep(self._options.settle_grace)
            self._held.clear()

    async def _stop(self, queue: aio_pika.abc.AbstractQueue, tag: str) -> None:
        if not self._cancelled:
            self._cancelled = True
            await queue.cancel(tag)

    async def _settle(
        self,
        channel: AbstractChannel,
        batch: Sequence[AbstractIncomingMessage],
        actions: Sequence[Action],
    ) -> None:
        if len(actions) != len(batch):
            raise AssertionError("decide must return one action per message")
        exchange = channel.default_exchange
        # Tasks start in order and the channel writes publishes in that order, so copies
        # reach the tail in the order of their originals.
        pending: list[asyncio.Future[object] | None] = []
        for delivery, action in zip(batch, actions, strict=True):
            if isinstance(action, _Drop):
                pending.append(None)
                continue
            if isinstance(action, Move):
                if self._pacer is not None:
                    await self._pacer.wait()
                message, key = action.message, action.queue
            else:
                message, key = copy_of(delivery), self._queue
            publish = exchange.publish(
                message, routing_key=key, mandatory=True, timeout=self._options.confirm_timeout
            )
            pending.append(asyncio.ensure_future(publish))
        await asyncio.gather(*(p for p in pending if p is not None), return_exceptions=True)
        failure: BaseException | None = None
        settled: list[tuple[AbstractIncomingMessage, Action]] = []
        for delivery, action, done in zip(batch, actions, pending, strict=True):
            if done is not None:
                error = done.exception()
                if error is not None or not isinstance(done.result(), aiormq.spec.Basic.Ack):
                    failure = failure or error or DlqError("the broker refused a copy")
                    continue  # left unacked: it goes back to its place
            settled.append((delivery, action))
        moved = [delivery for delivery, action in settled if isinstance(action, Move)]
        if moved and self._moved is not None:
            await self._moved(moved)
        for delivery, _ in settled:
            if self._may_ack():
                await self._ack(delivery)
            else:
                self._held.append(delivery)
        if failure is not None:
            raise DlqError(
                f"a copy was not confirmed ({type(failure).__name__}: {failure}); the pass "
                "stopped and every message without a confirmed copy stays in the queue"
            ) from failure

    def _may_ack(self) -> bool:
        return self._cancelled or self.report.acked < self.report.total - self._window

    async def _ack(self, delivery: AbstractIncomingMessage) -> None:
        await delivery.ack()
        self.report.acked += 1
