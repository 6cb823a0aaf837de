"""Acks coalesced into ``basic.ack(multiple=True)`` frames, written in order.

One ack frame per message is one socket write per message: about a tenth of the daemon's CPU
at full speed. Deliveries of a channel are remembered in delivery order; ``ACK_DELAY`` after
the first ack is decided, the run of settled deliveries at the head goes as one ``multiple``
ack, and settled ones behind a still-running delivery are acked one by one, so a slow send
never holds back the acks (and the prefetch window) of the others for longer than that.

Safety: a ``multiple`` ack up to tag T acks every outstanding delivery <= T, so T is only
ever in a run whose members are all settled (acked here, or nacked before); and T itself
must still be outstanding, or RabbitMQ closes the channel ("unknown delivery tag"). Frames
therefore reach the broker in the order decided here: one writer per channel puts them on
aiormq's queue one after another (concurrent ``put`` calls on a full queue do not keep
their order). Every delivery must be registered (``delivered``) before any later one is
acked: the pipeline does it in the first step of its task, and aiormq starts those tasks
in order.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import aiormq

from .delivery import Delivery
from .logs import get_logger

log = get_logger("acks")

_PENDING, _TO_ACK, _SETTLED = 0, 1, 2

#: How long a decided ack waits for others to go with it. Flushing once per loop turn sent
#: 0.43 frames a message at full speed (2.4 deliveries a frame); a few milliseconds more in
#: the prefetch window is nothing next to a Cloud API call.
ACK_DELAY = 0.002

# (tag, multiple, requeue): requeue None for an ack, True/False for a nack.
_Frame = tuple[int, bool, bool | None]


class _Outstanding:
    """One channel's deliveries not yet settled, and the frames not yet written."""

    __slots__ = ("channel", "frames", "order", "state", "to_ack", "writer")

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.order: deque[int] = deque()
        self.state: dict[int, int] = {}
        self.to_ack: set[int] = set()
        self.frames: deque[_Frame] = deque()
        self.writer: asyncio.Task[None] | None = None


class AckCoalescer:
    """Per channel, the deliveries not yet settled, and the acks decided and not yet sent."""

    def __init__(self) -> None:
        self._channels: dict[int, _Outstanding] = {}
        self._timer: asyncio.TimerHandle | None = None

    def _outstanding(self, channel: Any) -> _Outstanding:
        out = self._channels.get(id(channel))
        if out is None or out.channel is not channel:
            out = self._channels[id(channel)] = _Outstanding(channel)
        return out

    def delivered(self, delivery: Delivery) -> None:
        tag = delivery.delivery_tag
        if tag is None:
            return
        out = self._outstanding(delivery.channel)
        out.order.append(tag)
        out.state[tag] = _PENDING

    def ack(self, delivery: Delivery) -> None:
        """Ack within ``ACK_DELAY``; raises if the delivery's channel is already closed."""
        out = self._outstanding(delivery.channel)  # raises ChannelInvalidStateError when closed
        tag = delivery.delivery_tag
        if tag is None or out.state.get(tag) != _PENDING:
            self._write(out, (tag or 0, False, None))  # not registered: ack it alone
            return
        out.state[tag] = _TO_ACK
        out.to_ack.add(tag)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(ACK_DELAY, self._flush)

    def nack(self, delivery: Delivery, *, requeue: bool) -> None:
        """Nack now, in order with the acks already decided."""
        out = self._outstanding(delivery.channel)
        tag = delivery.delivery_tag or 0
        self._write(out, (tag, False, requeue))
        if tag in out.state:
            out.state[tag] = _SETTLED

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()  # when called by ``drain`` before it fires
            self._timer = None
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
                self._write(out, (last, True, None))
            for tag in sorted(out.to_ack):
                out.state[tag] = _SETTLED
                self._write(out, (tag, False, None))
            out.to_ack.clear()

    def _write(self, out: _Outstanding, frame: _Frame) -> None:
        out.frames.append(frame)
        if out.writer is None or out.writer.done():
            out.writer = asyncio.ensure_future(self._writer(out))

    async def _writer(self, out: _Outstanding) -> None:
        channel = out.channel
        while out.frames:
            tag, multiple, requeue = out.frames.popleft()
            try:
                if requeue is None:
                    await channel.basic_ack(tag, multiple=multiple, wait=False)
                else:
                    await channel.basic_nack(tag, requeue=requeue, wait=False)
            except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
                # The channel died: nothing lost, the broker redelivers what was not acked.
                log.info("acks_not_sent", error=type(exc).__name__, frames=len(out.frames) + 1)
                out.frames.clear()
                return

    async def drain(self) -> None:
        """Write what is decided now (before closing the channel)."""
        if self._timer is not None:
            self._flush()
        writers = [o.writer for o in self._channels.values() if o.writer is not None]
        if writers:
            await asyncio.gather(*writers, return_exceptions=True)
