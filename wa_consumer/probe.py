"""Depth and head age of the main, wait and dead-letter queues, read from the broker.

Every interval (``WA_METRICS_QUEUE_INTERVAL_SECONDS``, default 15 s), on a channel of its
own, bounded by a timeout:

- every queue's depth from a passive ``queue.declare`` (the broker's count of ready
  messages);
- for the queues named in ``WA_METRICS_QUEUE_PEEK`` (default ``["main"]``; also ``wait``
  and ``dead``), the head message's age from a ``basic.get`` without ack, reading the
  newest time the message is known to have entered a queue (the broker's ``x-death`` time
  when it came back from a wait queue, our ``x-failed-at`` when it was retried or
  dead-lettered, else the producer's ``timestamp``), then ``nack(requeue=True)``. In a
  classic queue a requeued message keeps its place, so the queue's order is unchanged. An
  empty queue is age 0; a head with no time at all is NaN.

While the head is held (one round trip, about a millisecond) it is invisible to others: a
live consumer may receive the next message first (the daemon promises no order between
messages in flight anyway), a count taken at that instant is one short, and a ``basic.get``
loop that stops at "empty" ends without it. Hence the default, the main queue alone: its
readers are our consumers, and its head age is what the queue-age alert needs. A wait
queue's head age is bounded by the queue's TTL by construction; the dead-letter queue's
oldest age is in ``wa-consumer dlq stats``. Peeking ``dead`` can make a DLQ pass that
counts the queue at that instant pass over its last message, so a wait or dead-letter queue
that has a consumer (a ``wa-consumer dlq`` pass) is never peeked; its last age stays.
The peek also sets the message's ``redelivered`` flag, hence two more exceptions:

- the main queue is peeked only when the ledger bounds crash loops. Without a ledger the
  pipeline reads a redelivery as a possible crash and would send the peeked message to the
  tail with a higher delivery count; its depth is still reported, its age is not.
- quorum queues are never peeked: there every requeue counts toward ``delivery-limit``,
  past which the broker drops or dead-letters the message.

The channel is closed at the end of each round; closing it also hands back a message held
when a round runs out of time.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from .logs import get_logger
from .metrics import Metrics
from .settings import Settings

log = get_logger("probe")


@dataclass(frozen=True, slots=True)
class WatchedQueue:
    name: str
    role: str  # main | wait | dead | webhooks | webhooks_failed
    peek: bool  # read the head message's age (see the module docstring)


class QueueProbe:
    """Reads each queue's depth and head age into ``metrics``; one round per ``sample``."""

    def __init__(
        self,
        connection: AbstractConnection,
        queues: Sequence[WatchedQueue],
        metrics: Metrics,
        *,
        timeout: float = 5.0,
        on_main_age: Callable[[str, float], None] | None = None,
    ) -> None:
        self._connection = connection
        self._queues = tuple(queues)
        self._timeout = timeout
        self._on_main_age = on_main_age or (lambda queue, age: None)
        self._depth = {q.name: metrics.queue_depth.labels(q.name, q.role) for q in queues}
        self._age = {
            q.name: metrics.queue_oldest_age.labels(q.name, q.role) for q in queues if q.peek
        }
        self._failing = False

    async def run(self, interval: float) -> None:
        """Sample every ``interval`` seconds until cancelled."""
        while True:
            await self.sample()
            await asyncio.sleep(interval)

    async def sample(self) -> bool:
        """One round over every queue; False (and logged once per streak) when it failed."""
        channel: AbstractChannel | None = None
        try:
            async with asyncio.timeout(self._timeout):
                channel = await self._connection.channel()
                for queue in self._queues:
                    await self._read(channel, queue)
        except (TimeoutError, aiormq.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
            if not self._failing:
                log.warning("queue_probe_failed", error=f"{type(exc).__name__}: {exc}"[:200])
            self._failing = True
            return False
        finally:
            if channel is not None and not channel.is_closed:
                with suppress(Exception):
                    await asyncio.wait_for(channel.close(), 2)
        if self._failing:
            log.info("queue_probe_recovered")
        self._failing = False
        return True

    async def _read(self, channel: AbstractChannel, watched: WatchedQueue) -> None:
        queue = await channel.declare_queue(watched.name, passive=True)
        depth = queue.declaration_result.message_count or 0
        self._depth[watched.name].set(depth)
        if not watched.peek:
            return
        if watched.role != "main" and queue.declaration_result.consumer_count:
            return  # a DLQ pass (or another tool) is reading it: keep out of its way
        age = 0.0
        if depth:
            head = await queue.get(no_ack=False, fail=False, timeout=self._timeout)
            if head is not None:
                try:
                    entered = entered_at(head)
                finally:
                    await head.nack(requeue=True)
                age = _age(entered)
        self._age[watched.name].set(age)
        if watched.role == "main" and not math.isnan(age):
            self._on_main_age(watched.name, age)


def entered_at(message: AbstractIncomingMessage) -> datetime | None:
    """The newest time ``message`` is known to have entered a queue, if any."""
    headers = message.headers or {}
    times: list[datetime] = []
    for death in _list(headers.get("x-death")):
        if isinstance(death, dict) and (t := _time(death.get("time"))) is not None:
            times.append(t)
    if (t := _time(headers.get("x-failed-at"))) is not None:
        times.append(t)
    if (t := _time(message.timestamp)) is not None:
        times.append(t)
    return max(times) if times else None


def _age(entered: datetime | None) -> float:
    if entered is None:
        return math.nan
    return max(0.0, (datetime.now(UTC) - entered).total_seconds())


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def _time(value: object) -> datetime | None:
    if isinstance(value, bytes):
        value = value.decode(errors="ignore")
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return None


def watched_queues(
    settings: Settings, retry_queues: Iterable[str], *, peek_main: bool
) -> list[WatchedQueue]:
    """The main, wait and dead-letter queues, peeked as asked where that is safe; the
    webhook queues (a status backlog, unreadable bodies) are counted, never peeked."""
    classic = settings.queue_type == "classic"
    peek = set(settings.metrics_queue_peek) if classic else set()
    return [
        WatchedQueue(settings.queue, "main", "main" in peek and peek_main),
        *(WatchedQueue(name, "wait", "wait" in peek) for name in retry_queues),
        WatchedQueue(settings.dead_letter_queue, "dead", "dead" in peek),
        WatchedQueue(settings.webhook_queue, "webhooks", False),
        WatchedQueue(settings.webhook_failed_queue, "webhooks_failed", False),
    ]
