"""Acks coalesced into ``basic.ack(multiple=True)`` frames.

One ack frame per message is one socket write per message: about a tenth of the daemon's CPU
at full speed. Deliveries of a channel are remembered in delivery order; once per loop turn,
the run of settled deliveries at the head goes as one ``multiple`` ack, and settled ones
behind a still-running delivery are acked one by one at once, so a slow send never holds
back the acks (and the prefetch window) of the others.

Safety: a ``multiple`` ack up to tag T acks every outstanding delivery <= T, so T is only
ever in a run whose members are all settled (acked here, or nacked before); and T itself
must still be outstanding, or RabbitMQ closes the channel ("unknown delivery tag").
Every delivery must be registered (``delivered``) before any later one is acked: the
pipeline does it in the first step of its task, and aio-pika starts those tasks in order.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import aiormq
from aio_pika.abc import AbstractIncomingMessage

from .logs import get_logger

log = get_logger("acks")

_PENDING, _TO_ACK, _SETTLED = 0, 1, 2


class _Outstanding:
    __slots__ = ("channel", "order", "state", "to_ack")

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.order: deque[int] = deque()
        self.state: dict[int, int] = {}
        self.to_ack: set[int] = set()


class AckCoalescer:
    """Per channel, the deliveries not yet settled, and the acks to send this loop turn."""

    def __init__(self) -> None:
        self._channels: dict[int, _Outstanding] = {}
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    def delivered(self, delivery: AbstractIncomingMessage) -> None:
        tag = delivery.delivery_tag
        if tag is None:
            return
        channel = delivery.channel
        out = self._channels.get(id(channel))
        if out is None or out.channel is not channel:
            out = self._channels[id(channel)] = _Outstanding(channel)
        out.order.append(tag)
        out.state[tag] = _PENDING

    def ack(self, delivery: AbstractIncomingMessage) -> None:
        """Ack soon (this loop turn); raises if the delivery's channel is already closed."""
        channel = delivery.channel  # raises ChannelInvalidStateError when closed
        out = self._channels.get(id(channel))
        tag = delivery.delivery_tag
        if out is None or tag is None or out.state.get(tag) != _PENDING:
            self._spawn(channel.basic_ack(tag or 0))
            return
        out.state[tag] = _TO_ACK
        out.to_ack.add(tag)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def nack(self, delivery: AbstractIncomingMessage, *, requeue: bool) -> None:
        channel = delivery.channel
        tag = delivery.delivery_tag
        await channel.basic_nack(tag or 0, requeue=requeue)
        out = self._channels.get(id(channel))
        if out is not None and tag is not None and tag in out.state:
            out.state[tag] = _SETTLED

    def _flush(self) -> None:
        self._scheduled = False
        for key, out in list(self._channels.items()):
            if out.channel.is_closed:
                del self._channels[key]  # the broker requeues what was not acked
                continue
            last = 0  # the last of the head run still outstanding at the broker
            while out.order and out.state[out.order[0]] != _PENDING:
                tag = out.order.popleft()
                if out.state.pop(tag) == _TO_ACK:
                    last = tag
                    out.to_ack.discard(tag)
            if last:
                self._spawn(out.channel.basic_ack(last, multiple=True))
            for tag in out.to_ack:
                out.state[tag] = _SETTLED
                self._spawn(out.channel.basic_ack(tag))
            out.to_ack.clear()

    def _spawn(self, ack: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(ack)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            # The channel died: nothing lost, the broker redelivers what was not acked.
            level = log.info if isinstance(exc, aiormq.exceptions.AMQPError) else log.warning
            level("ack_not_sent", error=type(exc).__name__)

    async def drain(self) -> None:
        """Send what is pending now (before closing the channel)."""
        if self._scheduled:
            self._flush()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
